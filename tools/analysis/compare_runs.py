"""Overlay the loss and COCO mAP curves of several runs in one PNG.

Example (two arms of the convergence study, see run_convergence.sh)::

    python tools/analysis/compare_runs.py work_dirs/conv/k2 work_dirs/conv/k0 \
        --labels 'K=2 (ATSS + Faster R-CNN)' 'K=0' --out curves.png

:func:`plot_runs` draws the figure from series already read; the
convergence benchmark (``convergence.py``) uses it too.
"""
import argparse
import os.path as osp
import sys
from typing import List, Optional, Sequence, Tuple

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from plot_curves import Series, find_scalar_files, read_scalars, smooth  # noqa

Run = Tuple[str, Series, Series]  # label, training and validation series


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('work_dirs', nargs='+')
    parser.add_argument('--labels', nargs='+', default=None)
    parser.add_argument('--loss-key', default='loss_cls',
                        help="main-query loss to compare ('loss' is the "
                        'total, which differs with the heads present)')
    parser.add_argument('--metric', default='coco/bbox_mAP')
    parser.add_argument('--smooth', type=int, default=10)
    parser.add_argument('--out', default='compare_runs.png')
    return parser.parse_args(argv)


def plot_runs(runs: Sequence[Run],
              loss_key: str,
              metric: str,
              window: int,
              out: str,
              loss_title: Optional[str] = None,
              metric_title: Optional[str] = None,
              suptitle: Optional[str] = None) -> None:
    """Draw ``loss_key`` (left, log axis, moving average over ``window``
    logged points) and ``metric`` (right) of every run against the
    iteration and save the PNG. A run without the key leaves no line."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, train, val in runs:
        loss = train.get(loss_key, {})
        steps = sorted(loss)
        ax_loss.plot(
            steps,
            smooth([loss[s] for s in steps], window),
            label=label,
            marker='.' if len(steps) < 50 else None)
        values = val.get(metric, {})
        steps = sorted(values)
        ax_map.plot(steps, [values[s] for s in steps], 'o-', label=label)
    ax_loss.set(title=loss_title or loss_key, xlabel='iteration', yscale='log')
    ax_map.set(title=metric_title or metric, xlabel='iteration')
    ax_map.set_ylim(bottom=0)
    for ax in (ax_loss, ax_map):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None) -> str:
    args = parse_args(argv)
    labels: List[str] = args.labels or args.work_dirs
    if len(labels) != len(args.work_dirs):
        sys.exit('give one --labels entry per work dir')
    runs = []
    for work_dir, label in zip(args.work_dirs, labels):
        files = find_scalar_files(work_dir)
        if not files:
            sys.exit(f'no scalars.json or json log under {work_dir}')
        train, val = read_scalars(files)
        runs.append((label, train, val))
        metric = val.get(args.metric, {})
        if metric:
            last = max(metric)
            print(f'{label}: {args.metric} = {metric[last]:.3f} at '
                  f'step {last}')
    plot_runs(
        runs,
        args.loss_key,
        args.metric,
        args.smooth,
        args.out,
        loss_title=f'{args.loss_key} (main queries, last layer)')
    print(f'wrote {args.out}')
    return args.out


if __name__ == '__main__':
    main()
