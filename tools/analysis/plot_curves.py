"""Plot the loss and COCO mAP curves of a training run into a PNG.

Reads the scalars mmengine's ``LocalVisBackend`` / ``LoggerHook`` write:
``<work_dir>/<timestamp>/vis_data/scalars.json`` (or the
``<timestamp>.json`` log next to it), one JSON object per line. Training lines
carry ``loss*`` keys, the learning rate and ``step`` = iteration; validation
lines carry ``coco/bbox_mAP*`` and ``step`` = epoch (or iteration for
iteration-based runs).

Given a work dir, every run in it is read in time order, so that a run that
was resumed (a new ``<timestamp>`` folder) continues the curve; where runs
overlap the later one wins.

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
import fnmatch
import glob
import json
import os.path as osp
import sys
from typing import Dict, List, Sequence, Tuple

Series = Dict[str, Dict[int, float]]  # key -> {step: value}

DEFAULT_LOSS_KEYS = ('loss', 'loss_cls', 'loss_bbox', 'loss_iou')
DEFAULT_METRIC_KEYS = ('coco/bbox_mAP', 'coco/bbox_mAP_50',
                       'coco/bbox_mAP_75')


def find_scalar_files(path: str) -> List[str]:
    """The scalar logs to read for ``path``, oldest run first.

    Args:
        path: A ``scalars.json`` / ``<timestamp>.json`` file, a
            ``<timestamp>`` folder or a work dir holding several.
    """
    if osp.isfile(path):
        return [path]
    files = []
    for run in sorted(glob.glob(osp.join(path, '*', 'vis_data'))
                      + glob.glob(osp.join(path, 'vis_data'))):
        scalars = osp.join(run, 'scalars.json')
        logs = sorted(glob.glob(osp.join(run, '[0-9]*.json')))
        if osp.isfile(scalars):
            files.append(scalars)
        elif logs:
            files.append(logs[-1])
    return files


def read_scalars(files: Sequence[str]) -> Tuple[Series, Series]:
    """Split the logged scalars into training and validation series.

    Returns:
        tuple[Series, Series]: Training scalars by iteration and validation
        scalars by their step (epoch or iteration).
    """
    train: Series = {}
    val: Series = {}
    for path in files:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a killed run
                step = record.pop('step', record.get('iter'))
                if step is None:
                    continue
                # Validation lines are the ones with "<metric>/<name>" keys.
                target = val if any('/' in k for k in record) else train
                for key, value in record.items():
                    if isinstance(value, (int, float)):
                        target.setdefault(key, {})[int(step)] = float(value)
    return train, val


def select_keys(available: Sequence[str], patterns: Sequence[str]
                ) -> List[str]:
    """Keys matching any of ``patterns`` (shell wildcards), in pattern
    order."""
    chosen = []
    for pattern in patterns:
        for key in sorted(available):
            if fnmatch.fnmatchcase(key, pattern) and key not in chosen:
                chosen.append(key)
    return chosen


def smooth(values: Sequence[float], window: int) -> List[float]:
    """Trailing moving average over ``window`` points (1 = unchanged)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot(train: Series, val: Series, loss_keys: Sequence[str],
         metric_keys: Sequence[str], window: int, out: str, title: str,
         log_y: bool = True) -> None:
    """Draw losses (left) and metrics (right) and save the PNG.

    A logarithmic loss axis keeps the components readable next to the
    total, which for Co-DETR is ~30x larger (auxiliary losses weigh x12).
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(13, 4.5))
    if len(loss_keys) > 10:  # beyond the default cycle colours repeat
        ax_loss.set_prop_cycle(color=plt.get_cmap('tab20').colors)
    for key in loss_keys:
        steps = sorted(train[key])
        values = [train[key][s] for s in steps]
        line, = ax_loss.plot(steps, smooth(values, window), label=key,
                             linewidth=1.5 if key == 'loss' else 1.0)
        if window > 1:  # raw values faintly behind the smoothed curve
            ax_loss.plot(steps, values, color=line.get_color(), alpha=0.2,
                         linewidth=0.5)
    if log_y:
        ax_loss.set_yscale('log')
    ax_loss.set_xlabel('iteration')
    ax_loss.set_ylabel('loss' + (f' (moving average of {window})'
                                 if window > 1 else ''))
    ax_loss.set_title('training losses')
    if loss_keys:
        ax_loss.legend(fontsize=8)
    ax_loss.grid(alpha=0.3)

    for key in metric_keys:
        steps = sorted(val[key])
        ax_map.plot(steps, [val[key][s] for s in steps], marker='o',
                    label=key.split('/')[-1])
    ax_map.set_xlabel('epoch (or iteration for iteration-based runs)')
    ax_map.set_ylabel('COCO AP')
    ax_map.set_title('validation' if metric_keys else
                     'validation (no metrics logged yet)')
    if metric_keys:
        ax_map.legend(fontsize=8)
    ax_map.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
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


def main(argv=None) -> str:
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
