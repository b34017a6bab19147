"""Iteration time of ``tools/train.py`` on generated data of COCO size.

Trains CONFIG for one epoch of NUM_IMAGES generated images (400-640 px
sides) through the config's own data pipeline, workers and hooks, and
prints the median iteration time and data-loading time that the runner
logged, to compare with the benchmark's training step
(``tools/analysis/benchmark.py``) measured on the same machine.

Usage::

    python tools/analysis/train_throughput.py CONFIG --work-dir DIR
        [--images 400] [--skip 50] [--data-root DIR]
        [--cfg-options key=value ...]
"""
import argparse
import json
import sys

try:
    from projects.codetr.analysis import train_throughput
except ModuleNotFoundError as err:  # the plugin or a dependency is missing
    sys.exit(f'error: {err}. Install the codetr plugin and its dependencies: '
             '`bash tools/install.sh` from the repository root.')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('--work-dir', required=True)
    parser.add_argument(
        '--images',
        type=int,
        default=400,
        help='generated training images (iterations x batch size)')
    parser.add_argument(
        '--skip',
        type=int,
        default=50,
        help='iterations left out at the start (warm-up)')
    parser.add_argument(
        '--data-root',
        default=None,
        help='generated data to reuse (default: WORK_DIR/data, generated '
        'when missing)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        default=[],
        help='more key=value overrides of the config')
    parser.add_argument('--out', default=None, help='write results as JSON')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    result = train_throughput.run(args.config, args.work_dir, args.images,
                                  args.skip, args.data_root, args.cfg_options)
    print(f"tools/train.py {args.config}: median iteration "
          f"{result['iter_ms']:.0f} ms, of which data loading "
          f"{result['data_ms']:.1f} ms ({100 * result['data_fraction']:.1f}"
          f" %), over {result['intervals']} logged intervals after "
          f"iteration {args.skip} (last {result['last_iter']})")
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=1)


if __name__ == '__main__':
    main()
