"""Train-step time, peak memory and inference speed, models side by side.

In one process on one GPU, for each model and precision (an *arm*, see
``projects/codetr/analysis/bench_arms.py``): the median time of a full
training step (forward, losses, backward, grad clip, optimizer step, with
the config's optimizer wrapper as ``tools/train.py`` builds it) and
inference images/s at batch 1, the arms' steps interleaved round-robin; and
each arm's peak GPU memory. Inputs are generated (random images and boxes),
so nothing is downloaded.
Ratios are to the first model's fp32 arm (by default mmdet 3.3's own
two-stage Deformable DETR with box refinement) and, for AMP, to the same
model's fp32 arm.

Example (one GPU)::

    python tools/analysis/benchmark.py --models mmdet-ddetr k0 k2 \
        --precisions fp32 amp --stages --profile k2 --out bench.json

mmdet's own Co-DINO, from an mmdetection source checkout, against ours::

    python tools/analysis/benchmark.py --models mmdet-ddetr codino \
        mmdet-codino --mmdet-source ../mmdetection --precisions fp32 amp
"""
import argparse
import sys

import torch

try:
    from projects.codetr.analysis.bench_arms import MODELS
    from projects.codetr.analysis.benchmark import run
    from projects.codetr.analysis.mmdet_source import SOURCE_MODELS
except ModuleNotFoundError as err:  # the plugin or a dependency is missing
    sys.exit(f'error: {err}. Install the codetr plugin and its dependencies: '
             '`bash tools/install.sh` from the repository root.')


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be at least 1, got {value}')
    return value


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--models',
        nargs='+',
        default=['mmdet-ddetr', 'k0', 'k2'],
        help=f'names of {sorted(MODELS)} (or of --mmdet-source\'s arms) or '
        'config paths, each optionally with @key=value,... overriding '
        'model.key; @tf32=True runs the arm\'s float32 matrix products in '
        'TF32')
    parser.add_argument(
        '--precisions',
        nargs='+',
        default=['fp32', 'amp'],
        choices=['fp32', 'amp'])
    parser.add_argument(
        '--train-size',
        type=int,
        nargs=2,
        default=[800, 1216],
        metavar=('H', 'W'))
    parser.add_argument(
        '--infer-size',
        type=int,
        nargs=2,
        default=[800, 1333],
        metavar=('H', 'W'))
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument(
        '--boxes',
        type=int,
        default=10,
        help='random ground-truth boxes per image')
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--iters', type=int, default=20)
    parser.add_argument('--infer-iters', type=int, default=30)
    parser.add_argument(
        '--back-to-back',
        type=positive_int,
        default=1,
        metavar='N',
        help='time each training sample as N steps run back to back, '
        'without a synchronisation between them, as a training loop runs '
        'them (default 1: each step synchronised on its own)')
    parser.add_argument(
        '--num-cp',
        type=int,
        default=None,
        help='checkpoint this many encoder layers (ours)')
    parser.add_argument(
        '--profile',
        nargs='*',
        default=[],
        help='model names: print where their training steps spend host '
        'and GPU time (kernel launches, synchronisations, per stage)')
    parser.add_argument(
        '--stages',
        action='store_true',
        help='also time the stages of a CoDETR training '
        'step (synchronising around each: slower overall)')
    parser.add_argument(
        '--device',
        default='cuda',
        help="'cpu' runs a smoke test (no memory figures)")
    parser.add_argument(
        '--optimizer',
        default='config',
        choices=['config', 'plain'],
        help="'config': each config's optim_wrapper (paramwise learning "
        "rates, grad clip); 'plain': one AdamW group for every model")
    parser.add_argument(
        '--mmdet-source',
        default=None,
        help='an mmdetection source checkout (v3.3.0) for the arms of its '
        f'projects/CO-DETR ({sorted(SOURCE_MODELS)}); they run in a child '
        'process with mmdet-ddetr as the reference arm of both processes')
    parser.add_argument('--out', default=None, help='write results as JSON')
    args = parser.parse_args()
    if not args.device.startswith('cuda') and 'amp' in args.precisions:
        parser.error("AMP needs CUDA (mmengine's AmpOptimWrapper): pass "
                     '--precisions fp32 with --device cpu')
    return args


def main() -> None:
    args = parse_args()
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        sys.exit('no CUDA device: pass --device cpu for a smoke test')
    run(args)


if __name__ == '__main__':
    main()
