"""What a new input size costs the convolutions of backbone and neck.

Runs CONFIG's backbone and neck forward and backward at NUM_SIZES (--sizes)
landscape input sizes (height 480-800, width up to 1333, no two with the
same feature-map grid at stride 32), each twice in a row, then at one
fixed size, and prints the medians: a size met for the first time, the
same size again, and the fixed size. On a GPU the first pass pays for
cuDNN's choice of execution plans for every convolution and shape; to
compare with cuDNN's older v7 API, run it again with
``TORCH_CUDNN_V8_API_DISABLED=1`` in the environment.

Usage::

    python tools/analysis/conv_shape_cost.py CONFIG [--sizes 20]
        [--batch-size 2] [--steady-size 800 1216] [--seed 0]
        [--device cuda] [--out result.json]
"""
import argparse
import json
import statistics
import sys

try:
    import torch

    from projects.codetr.analysis import conv_shape_cost
    from projects.codetr.analysis.bench_arms import build
except ModuleNotFoundError as err:  # the plugin or a dependency is missing
    sys.exit(f'error: {err}. Install the codetr plugin and its dependencies: '
             '`bash tools/install.sh` from the repository root.')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='config file, or a benchmark model '
                        'name such as k2')
    parser.add_argument('--sizes', type=int, default=20,
                        help='distinct input sizes, each run twice')
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument('--steady-size', type=int, nargs=2,
                        default=[800, 1216], metavar=('H', 'W'))
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the size draw')
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--out', default=None, help='write results as JSON')
    args = parser.parse_args()
    if args.sizes < 1 or args.batch_size < 1:
        parser.error('--sizes and --batch-size must be at least 1')
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        parser.error('no CUDA device: pass --device cpu (where no cuDNN '
                     'plans are built, so the figures only test the tool)')
    return args


def main() -> None:
    args = parse_args()
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    import projects.codetr  # noqa: F401  (registers the modules)
    model = build(args.config, None, args.device)
    steady = tuple(args.steady_size)
    sizes = conv_shape_cost.distinct_sizes(
        args.sizes, args.seed, exclude=[steady])
    result = conv_shape_cost.measure(model, sizes, steady, args.batch_size)
    print(f"{args.config}: backbone and neck, forward and backward, batch "
          f"{args.batch_size}, {result['convolutions']} convolutions per "
          f"forward; {result['api']}")
    first = statistics.median(result['first_ms'])
    again = statistics.median(result['again_ms'])
    print(f'{len(sizes)} sizes met for the first time: median {first:.1f} '
          f'ms; the same size again: {again:.1f} ms; a new size costs '
          f"{result['new_size_ms']:.1f} ms (median difference); "
          f"{steady[0]}x{steady[1]} repeated: {result['steady_ms']:.1f} ms")
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=1)


if __name__ == '__main__':
    main()
