"""Images/s of ONNX Runtime vs PyTorch for Co-DETR, and their difference.

::

    python tools/deploy/benchmark_onnx.py [CONFIG] [--checkpoint CKPT]

Builds the model (random weights and no backbone download unless
``--checkpoint``), exports it with dynamic shapes, and times batch-1
inference at ``--shape`` (800 1333) after warm-up: ONNX Runtime (CUDA
provider when present, else CPU) against PyTorch fp32, and PyTorch fp16
autocast on a GPU. Prints one line per runtime and the largest box/score
difference of ONNX Runtime vs PyTorch fp32 on the same input (see
``projects/codetr/deploy/benchmark.py``). The GPU path has not been run on
the machines where this script was written.
"""
import argparse
import os.path as osp
import sys

try:
    from projects.codetr.deploy.benchmark import compare_runtimes
except ModuleNotFoundError as err:  # the plugin or a dependency is missing
    sys.exit(f'error: {err}. Install the codetr plugin and its dependencies: '
             '`bash tools/install.sh` from the repository root.')

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
R50 = osp.join(REPO, 'configs', 'co_deformable_detr_r50_1x_coco.py')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', nargs='?', default=R50)
    parser.add_argument('--checkpoint', help='default: random weights')
    parser.add_argument('--shape', type=int, nargs=2, default=(800, 1333),
                        metavar=('H', 'W'))
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--no-tf32', action='store_true',
                        help='PyTorch on the GPU without TF32 convolutions '
                        'and matrix products (strict fp32, for comparing '
                        'against ONNX Runtime)')
    parser.add_argument('--threads', type=int, default=0,
                        help='CPU threads for both runtimes (0: default)')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    compare_runtimes(args.config, args.checkpoint, args.shape, args.warmup,
                     args.runs, args.no_tf32, args.threads)


if __name__ == '__main__':
    main()
