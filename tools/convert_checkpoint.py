"""Convert checkpoints between the released Co-DETR code, mmdet 3.x's
``projects/CO-DETR``, the official DAB-Deformable-DETR code and codetr.

The authors' code (mmdet 2.x) and codetr name some transformer tensors
differently (``attentions.0`` / ``self_attn``, ``level_embeds`` /
``level_embed``, ...; ``projects/codetr/checkpoint/released_names.py``), and
Swin backbones differently (original Swin / mmdet's ``SwinTransformer``,
``swin_names.py``); mmdet 3.x's port keeps the released transformer names
with mmdet's Swin (``mmdet3_names.py``); DAB-Deformable-DETR's official
code uses plain PyTorch names (``dab_detr_names.py``). This tool renames
every tensor::

    python tools/convert_checkpoint.py IN.pth OUT.pth \
        [--from released|codetr|mmdet3|dab-detr]
        [--to codetr|released|mmdet3|dab-detr]

The input is read with ``torch.load(weights_only=True)`` (no code in the file
runs; mmcv/mmdet objects in its ``meta`` are read as plain data). OUT holds
the weights and a small plain ``meta`` only; the input's ``meta``,
``optimizer`` and other entries are dropped.
"""
import argparse
import os
import os.path as osp
import sys

from _plugin import PluginImportError, import_plugin

EPILOG = """\
examples:
  released Co-Deformable-DETR R50 weights -> codetr, then evaluate on COCO:
    python tools/convert_checkpoint.py co_deformable_detr_r50_1x_coco.pth \\
      checkpoints/co_deformable_detr_r50_1x_coco_codetr.pth
    python tools/test.py configs/co_deformable_detr_r50_1x_coco.py \\
      checkpoints/co_deformable_detr_r50_1x_coco_codetr.pth
  a codetr checkpoint -> the released code's names:
    python tools/convert_checkpoint.py work_dirs/x/epoch_12.pth \\
      epoch_12_released.pth --to released
  an mmdet 3.x projects/CO-DETR checkpoint -> codetr:
    python tools/convert_checkpoint.py co_dino_5scale_swin_large_1x.pth \\
      co_dino_5scale_swin_large_1x_codetr.pth --from mmdet3
  official DAB-Deformable-DETR R50 weights (IDEA-Research/DAB-DETR) -> codetr
  (a 91-class COCO classifier becomes mmdet's 80 classes):
    python tools/convert_checkpoint.py dab_deformable_detr_r50.pth \\
      checkpoints/dab_deformable_detr_r50_codetr.pth
    python tools/test.py configs/dab_deformable_detr_r50_50e_coco.py \\
      checkpoints/dab_deformable_detr_r50_codetr.pth

The source layout is taken from the tensor names when --from is not given;
the target is codetr for released and mmdet3 inputs, released for codetr
inputs, when --to is not given.
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Convert a Co-Deformable-DETR checkpoint between the '
        'released code (mmdet 2.x names) and codetr (mmdet 3.x names).',
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        'src',
        metavar='IN',
        help='checkpoint to convert (.pth: {"state_dict": ..., "meta": ...} '
        'or a bare state dict; a DDP "module." prefix is removed)')
    parser.add_argument('dst', metavar='OUT', help='converted checkpoint')
    parser.add_argument(
        '--from',
        dest='source',
        choices=['released', 'codetr', 'mmdet3', 'dab-detr'],
        help='layout of IN (default: detected from its tensor names)')
    parser.add_argument(
        '--to',
        choices=['codetr', 'released', 'mmdet3', 'dab-detr'],
        help='target layout (default: codetr for a released or mmdet3 IN, '
        'released for a codetr IN)')
    return parser.parse_args()


def choose_layouts(detected: str, to, src: str, source=None):
    """(source, target) layouts from ``--from``/``--to`` and the detected
    layout of ``src``."""
    from projects.codetr.checkpoint import (CODETR, RELEASED, UNKNOWN,
                                            CheckpointError)
    from projects.codetr.checkpoint.loading import LAYOUT_NAMES
    if source is None and detected == UNKNOWN:
        if to in (CODETR, RELEASED):
            # e.g. a state dict without transformer keys: the other one of
            # the two layouts, as asked; unknown keys are then listed
            source = RELEASED if to == CODETR else CODETR
        else:
            raise CheckpointError(
                f'cannot tell the layout of {src}: its tensor names are '
                f'neither only those of the released Co-DETR code (e.g. '
                f'`query_head.transformer.encoder.layers.0.attentions.0.*`) '
                f'nor only codetr\'s (`...layers.0.self_attn.*`). Pass '
                f'--from released, --from codetr or --from mmdet3 (or --to '
                f'codetr / --to released) to convert it anyway; keys that '
                f'belong to no Co-DETR module are then listed.')
    source = source or detected
    if to is None:
        return source, RELEASED if source == CODETR else CODETR
    if source == to:
        raise CheckpointError(
            f'{src} already uses the {LAYOUT_NAMES[to]} names: nothing to '
            f'convert. Use it as it is, or pass another --to.')
    return source, to


def convert(src: str, dst: str, to=None, source=None) -> dict:
    """Read ``src`` safely, rename its tensors, write ``dst``.

    Returns:
        dict: Summary: ``tensors``, ``source``, ``target``, ``dropped``,
        ``stand_ins``, ``stripped_ddp_prefix``.

    Raises:
        FileNotFoundError, CheckpointError, UnmappedKeysError: With a message
            naming the problem and the fix.
    """
    import torch

    from projects.codetr.checkpoint import (CheckpointError, convert_layout,
                                            load_weights)
    if osp.exists(src) and osp.exists(dst) and osp.samefile(src, dst):
        raise CheckpointError(f'OUT is IN ({dst}); give another output '
                              'file.')
    loaded = load_weights(src)
    source, target = choose_layouts(loaded.layout, to, src, source)
    state_dict = convert_layout(loaded.state_dict, source, target)
    # Plain types only, so that torch >= 2.6 (weights_only) and mmengine's
    # load_checkpoint read it without an allowlist.
    meta = dict(
        layout=target,
        source_layout=source,
        converted_by='codetr tools/convert_checkpoint.py',
        source_file=osp.basename(src),
        dropped=list(loaded.dropped))
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    torch.save(dict(state_dict=state_dict, meta=meta), dst)
    return dict(
        tensors=len(state_dict),
        source=source,
        target=target,
        dropped=loaded.dropped,
        stand_ins=loaded.stand_ins,
        stripped_ddp_prefix=loaded.stripped_ddp_prefix)


def main() -> None:
    args = parse_args()
    try:
        import_plugin()
        from projects.codetr.checkpoint import (CheckpointError,
                                                UnmappedKeysError)
        from projects.codetr.checkpoint.loading import LAYOUT_NAMES
    except PluginImportError as err:
        sys.exit(f'error: {err}')
    try:
        summary = convert(args.src, args.dst, args.to, args.source)
    except (FileNotFoundError, CheckpointError) as err:
        sys.exit(f'error: {err}')
    except UnmappedKeysError as err:
        sys.exit(f'error: {err}\nOnly checkpoints of the models codetr '
                 'implements can be converted; the keys above belong to '
                 'modules it does not have. If IN is of another layout than '
                 'detected, name it with --from.')
    print(f'converted {summary["tensors"]} tensors: '
          f'{LAYOUT_NAMES[summary["source"]]} -> '
          f'{LAYOUT_NAMES[summary["target"]]}')
    if summary['stripped_ddp_prefix']:
        print('removed the DDP prefix "module." from the names')
    if summary['dropped']:
        print('dropped: ' + ', '.join(summary['dropped']) + ' (not weights)')
    if summary['stand_ins']:
        print('read as plain data: ' + ', '.join(summary['stand_ins']))
    print(f'wrote {args.dst}')


if __name__ == '__main__':
    main()
