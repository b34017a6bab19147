"""Export Co-Deformable-DETR (query head only) to one ONNX graph.

::

    python tools/deploy/export_onnx.py CONFIG CHECKPOINT OUT.onnx --dynamic

The graph takes the preprocessed batch ``inputs`` (B, 3, H, W) float32
(normalised, padded: the model's data preprocessor output) and
``img_sizes`` (B, 2) int64, the valid (h, w) of every image, and returns
``boxes`` (B, k, 4) (x1, y1, x2, y2) in input pixels clamped to each image's
valid size, ``scores`` (B, k) and ``labels`` (B, k) int64, k = the query
head's ``test_cfg.max_per_img`` (100): what ``CoDETR.predict(...,
rescale=False)`` returns. Padding masks and valid ratios are computed inside
the graph from ``img_sizes``. Auxiliary heads are not exported (they cost
nothing at test time); no NMS is needed.
"""
import argparse
import os.path as osp
import sys
import time
from typing import List, Optional

try:
    from projects.codetr.deploy import check_opset, export_onnx, load_detector
    from projects.codetr.deploy.runtime import check_graph
except ModuleNotFoundError as err:  # the plugin or a dependency is missing
    sys.exit(f'error: {err}. Install the codetr plugin and its dependencies: '
             '`bash tools/install.sh` from the repository root.')

EPILOG = """\
examples:
  dynamic batch and image size (recommended):
    python tools/deploy/export_onnx.py \\
      configs/co_deformable_detr_r50_1x_coco.py ckpt.pth co_detr.onnx \\
      --dynamic
  then: python tools/deploy/infer_onnx.py co_detr.onnx CONFIG img.jpg \\
      --out-dir out
"""


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(
        description='Export Co-DETR to ONNX (backbone, neck, query head).',
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file (eval_module="detr")')
    parser.add_argument('checkpoint', help='checkpoint (.pth) of that config')
    parser.add_argument('out', metavar='OUT.onnx', help='ONNX file to write')
    parser.add_argument(
        '--opset', type=int, default=17,
        help='ONNX opset (default 17; at least 16, for GridSample)')
    parser.add_argument(
        '--dynamic', action='store_true',
        help='dynamic batch, height and width (otherwise the graph only '
        'accepts the --shape/--batch it was traced with)')
    parser.add_argument(
        '--fp16', action='store_true',
        help='fp16 graph: not supported yet, refused with an error on every '
        'machine (the deformable-attention core is kept in fp32 by the '
        'model; an fp16 ONNX graph would need a CUDA provider and a '
        'mixed-precision conversion that is not implemented). Export fp32 '
        'and run it with the CUDA provider instead')
    parser.add_argument(
        '--shape', type=int, nargs=2, default=(800, 1333),
        metavar=('H', 'W'), help='example input size traced (800 1333)')
    parser.add_argument('--batch', type=int, default=1,
                        help='example batch size traced (default 1)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
        help='override config settings, e.g. model.eval_module=detr')
    parser.add_argument(
        '--no-check', action='store_true',
        help='skip onnx.checker and the ONNX Runtime run after export')
    return parser.parse_args(argv)


def export(args: argparse.Namespace) -> None:
    """Load, export, check; raises ``ValueError`` on bad input."""
    from mmengine.config import Config
    check_opset(args.opset)
    if args.fp16:
        import torch
        where = ('this machine has no CUDA GPU'
                 if not torch.cuda.is_available() else 'it is not implemented')
        raise ValueError(
            f'--fp16 is refused: {where}. Export the fp32 graph (drop '
            '--fp16) and run it with ONNX Runtime\'s CUDA provider.')
    if not osp.isfile(args.checkpoint):
        raise ValueError(f'checkpoint not found: {args.checkpoint}')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    model = load_detector(cfg, args.checkpoint)
    start = time.time()
    export_onnx(model, args.out, opset=args.opset, dynamic=args.dynamic,
                shape=args.shape, batch=args.batch)
    print(f'exported {args.out} (opset {args.opset}, '
          f'{"dynamic" if args.dynamic else "static"} shapes) in '
          f'{time.time() - start:.1f} s')
    if not args.no_check:
        check_graph(args.out)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        export(args)
    except (ValueError, FileNotFoundError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
