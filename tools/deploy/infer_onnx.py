"""Run an exported Co-DETR ONNX graph with ONNX Runtime on image files.

::

    python tools/deploy/infer_onnx.py MODEL.onnx CONFIG IMAGE... \\
        --out-dir DIR [--score-thr 0.3]

Preprocessing is the config's: its test pipeline (``LoadImageFromFile``,
``Resize``, ``PackDetInputs``; annotation loading is dropped) and the
model's ``DetDataPreprocessor`` (mean/std, BGR->RGB, padding), one image
per run. Writes what ``DetInferencer(...)(imgs, out_dir=DIR)`` writes:
``DIR/vis/<file name>`` with the detections of score >= ``--score-thr``
drawn, and ``DIR/preds/<stem>.json`` with all top-k ``labels``, ``scores``
and ``bboxes`` ((x1, y1, x2, y2) in original-image pixels). The CUDA
provider is used when ONNX Runtime has it, else the CPU.
"""
import argparse
import os
import os.path as osp
import sys
from typing import List, Optional

try:
    from projects.codetr.deploy.runtime import OnnxDetector, dataset_meta
except ModuleNotFoundError as err:  # the plugin or a dependency is missing
    sys.exit(f'error: {err}. Install the codetr plugin and its dependencies: '
             '`bash tools/install.sh` from the repository root.')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='ONNX Runtime inference of an exported Co-DETR.')
    parser.add_argument('model', metavar='MODEL.onnx')
    parser.add_argument('config', help='the config the model was exported '
                        'from (test pipeline, preprocessing, classes)')
    parser.add_argument('images', nargs='+', metavar='IMAGE')
    parser.add_argument('--out-dir', required=True,
                        help='writes DIR/vis/*.jpg and DIR/preds/*.json')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='lowest score drawn (default 0.3, as '
                        'DetInferencer); the json keeps all detections')
    parser.add_argument('--device', choices=['auto', 'cpu', 'cuda'],
                        default='auto',
                        help='auto: CUDA provider when available')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    import mmcv
    import mmengine
    from mmdet.registry import VISUALIZERS
    from mmengine.config import Config
    missing = [p for p in [args.model, *args.images] if not osp.isfile(p)]
    if missing:
        print(f'error: file(s) not found: {missing}', file=sys.stderr)
        return 1
    cfg = Config.fromfile(args.config)
    try:
        detector = OnnxDetector(args.model, cfg, args.device)
    except ValueError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    visualizer = VISUALIZERS.build(
        dict(cfg.visualizer, name='infer_onnx', vis_backends=None))
    visualizer.dataset_meta = dataset_meta(cfg)
    os.makedirs(osp.join(args.out_dir, 'preds'), exist_ok=True)
    for path in args.images:
        sample = detector(path)
        name = osp.basename(path)
        pred = sample.pred_instances.numpy()
        mmengine.dump(
            dict(labels=pred.labels.tolist(), scores=pred.scores.tolist(),
                 bboxes=pred.bboxes.tolist()),
            osp.join(args.out_dir, 'preds', osp.splitext(name)[0] + '.json'))
        img = mmcv.imread(path)[:, :, ::-1]  # RGB, as DetInferencer
        visualizer.add_datasample(
            name, img, sample, draw_gt=False,
            pred_score_thr=args.score_thr,
            out_file=osp.join(args.out_dir, 'vis', name))
        kept = int((pred.scores >= args.score_thr).sum())
        print(f'{path}: {kept} detections >= {args.score_thr} '
              f'(providers {detector.session.get_providers()[0]})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
