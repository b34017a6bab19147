"""Overlay the loss and COCO mAP curves of several runs in one PNG.

Example (the convergence study of the README)::

    python tools/analysis/compare_runs.py work_dirs/conv/k2 work_dirs/conv/k0 \
        --labels 'K=2 (ATSS + Faster R-CNN)' 'K=0' --out curves.png
"""
import argparse
import os.path as osp
import sys
from typing import List

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from plot_curves import find_scalar_files, read_scalars, smooth  # noqa: E402


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


def main(argv=None) -> str:
    args = parse_args(argv)
    labels: List[str] = args.labels or args.work_dirs
    if len(labels) != len(args.work_dirs):
        sys.exit('give one --labels entry per work dir')
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(12, 4.5))
    for work_dir, label in zip(args.work_dirs, labels):
        files = find_scalar_files(work_dir)
        if not files:
            sys.exit(f'no scalars.json or json log under {work_dir}')
        train, val = read_scalars(files)
        loss = train.get(args.loss_key, {})
        steps = sorted(loss)
        ax_loss.plot(steps, smooth([loss[s] for s in steps], args.smooth),
                     label=label)
        metric = val.get(args.metric, {})
        steps = sorted(metric)
        ax_map.plot(steps, [metric[s] for s in steps], 'o-', label=label)
        if steps:
            print(f'{label}: {args.metric} = {metric[steps[-1]]:.3f} at '
                  f'step {steps[-1]}')
    ax_loss.set(title=f'{args.loss_key} (main queries, last layer)',
                xlabel='iteration', yscale='log')
    ax_map.set(title=args.metric, xlabel='iteration')
    for ax in (ax_loss, ax_map):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f'wrote {args.out}')
    return args.out


if __name__ == '__main__':
    main()
