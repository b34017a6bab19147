"""Plot the loss and COCO mAP curves of a training run into a PNG.

Reads the scalar logs of a work dir (every run in it, in time order, so a
resumed run continues the curve); see :mod:`projects.codetr.analysis.curves`
for the files and keys read.

Example::

    python tools/analysis/plot_curves.py work_dirs/co_deformable_detr_r50 \
        --keys loss loss_cls 'loss_*_aux0' 'loss_rpn_*' --smooth 20

Co-DETR's keys: ``loss_cls/bbox/iou`` (last decoder layer), ``d<i>.*``
(earlier layers), ``enc_loss_*`` (two-stage proposals), ``loss_rpn_*``,
``loss_<name><k>`` (auxiliary head k: RoI heads first, then dense heads, so
0 = Faster R-CNN and 1 = ATSS in the R50 config) and ``*_aux<k>`` (the query
head on the positive queries of auxiliary head k).
"""
import argparse
import os.path as osp
import sys
from typing import List, Optional

try:
    from projects.codetr.analysis.curves import (DEFAULT_LOSS_KEYS,
                                                 DEFAULT_METRIC_KEYS,
                                                 find_scalar_files, plot,
                                                 read_scalars, select_keys)
except ModuleNotFoundError as err:  # the plugin or a dependency is missing
    sys.exit(f'error: {err}. Install the codetr plugin and its dependencies: '
             '`bash tools/install.sh` from the repository root.')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Plot loss and COCO mAP curves of a training run.')
    parser.add_argument(
        'path', help='work dir, <timestamp> folder or scalars.json file')
    parser.add_argument(
        '--keys', nargs='+', default=list(DEFAULT_LOSS_KEYS),
        help='loss keys to draw; wildcards allowed, e.g. "d5.*" or '
        '"*aux*" (default: %(default)s, those present)')
    parser.add_argument(
        '--metrics', nargs='+', default=list(DEFAULT_METRIC_KEYS),
        help='validation keys to draw (default: %(default)s)')
    parser.add_argument('--smooth', type=int, default=10,
                        help='moving-average window in logged points')
    parser.add_argument('--linear', action='store_true',
                        help='linear loss axis (default: logarithmic)')
    parser.add_argument('--out', default=None,
                        help='PNG path (default: <path>/curves.png)')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> str:
    args = parse_args(argv)
    files = find_scalar_files(args.path)
    if not files:
        sys.exit(f'error: no scalars.json or <timestamp>.json log under '
                 f'{args.path}; point to a work dir written by '
                 f'tools/train.py')
    train, val = read_scalars(files)
    loss_keys = select_keys(list(train), args.keys)
    metric_keys = select_keys(list(val), args.metrics)
    if not loss_keys and not metric_keys:
        sys.exit(f'error: none of {args.keys} / {args.metrics} in {files}; '
                 f'logged keys: {sorted(train)} {sorted(val)}')
    out = args.out or osp.join(
        args.path if osp.isdir(args.path) else osp.dirname(args.path),
        'curves.png')
    plot(train, val, loss_keys, metric_keys, max(1, args.smooth), out,
         title=osp.abspath(args.path), log_y=not args.linear)
    print(f'{out}: {len(loss_keys)} loss curves, {len(metric_keys)} metric '
          f'curves from {len(files)} log file(s)')
    return out


if __name__ == '__main__':
    main()
