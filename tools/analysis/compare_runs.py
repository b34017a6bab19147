"""Overlay the loss and COCO mAP curves of several runs in one PNG.

Example (two arms of the convergence study, see run_convergence.sh)::

    python tools/analysis/compare_runs.py work_dirs/conv/k2 work_dirs/conv/k0 \
        --labels 'K=2 (ATSS + Faster R-CNN)' 'K=0' --out curves.png

The figure is :func:`projects.codetr.analysis.curves.plot_runs`, which the
convergence benchmark's summary draws too.
"""
import argparse
import sys
from typing import List, Optional

try:
    from projects.codetr.analysis.curves import (find_scalar_files, plot_runs,
                                                 read_scalars)
except ModuleNotFoundError as err:  # the plugin or a dependency is missing
    sys.exit(f'error: {err}. Install the codetr plugin and its dependencies: '
             '`bash tools/install.sh` from the repository root.')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
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


def main(argv: Optional[List[str]] = None) -> str:
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
