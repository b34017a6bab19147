"""Convert checkpoints between the released Co-DETR code and codetr.

The authors' code (mmdet 2.x) and codetr name some transformer tensors
differently (``attentions.0`` / ``self_attn``, ``level_embeds`` /
``level_embed``, ...; ``projects/codetr/checkpoint/released_names.py``).
This tool renames every tensor of a Co-Deformable-DETR checkpoint::

    python tools/convert_checkpoint.py IN.pth OUT.pth [--to codetr|released]

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

The direction is taken from the tensor names when --to is not given.
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
        '--to',
        choices=['codetr', 'released'],
        help='target layout (default: the other one than IN\'s, detected '
        'from its tensor names)')
    return parser.parse_args()


def choose_target(detected: str, to, src: str) -> str:
    """The target layout from ``--to`` and the detected source layout."""
    from projects.codetr.checkpoint import (CODETR, RELEASED, UNKNOWN,
                                            CheckpointError)
    from projects.codetr.checkpoint.loading import LAYOUT_NAMES
    if to is None:
        if detected == UNKNOWN:
            raise CheckpointError(
                f'cannot tell the layout of {src}: its tensor names are '
                f'neither only those of the released Co-DETR code (e.g. '
                f'`query_head.transformer.encoder.layers.0.attentions.0.*`) '
                f'nor only codetr\'s (`...layers.0.self_attn.*`). Pass --to '
                f'codetr or --to released to convert it anyway; keys that '
                f'belong to no Co-DETR module are then listed.')
        return CODETR if detected == RELEASED else RELEASED
    if detected == to:
        raise CheckpointError(
            f'{src} already uses the {LAYOUT_NAMES[to]} names: nothing to '
            f'convert. Use it as it is, or pass the other --to.')
    return to


def convert(src: str, dst: str, to=None) -> dict:
    """Read ``src`` safely, rename its tensors, write ``dst``.

    Returns:
        dict: Summary: ``tensors``, ``source``, ``target``, ``dropped``,
        ``stand_ins``, ``stripped_ddp_prefix``.

    Raises:
        FileNotFoundError, CheckpointError, UnmappedKeysError: With a message
            naming the problem and the fix.
    """
    import torch

    from projects.codetr.checkpoint import (CODETR, RELEASED, CheckpointError,
                                            convert_state_dict, load_weights)
    if osp.exists(src) and osp.exists(dst) and osp.samefile(src, dst):
        raise CheckpointError(f'OUT is IN ({dst}); give another output '
                              'file.')
    loaded = load_weights(src)
    target = choose_target(loaded.layout, to, src)
    state_dict = convert_state_dict(loaded.state_dict, to=target)
    source = RELEASED if target == CODETR else CODETR
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
        summary = convert(args.src, args.dst, args.to)
    except (FileNotFoundError, CheckpointError) as err:
        sys.exit(f'error: {err}')
    except UnmappedKeysError as err:
        sys.exit(f'error: {err}\nOnly Co-Deformable-DETR checkpoints can be '
                 'converted: codetr implements that model, and the keys '
                 'above belong to modules it does not have (e.g. of '
                 'Co-DINO).')
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
