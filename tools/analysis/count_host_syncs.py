"""Where a Co-DETR training step reads tensors back to the host.

Runs one training step of CONFIG's model on generated images and boxes
under ``torch.profiler`` and counts the ops that make the host wait for a
GPU (scalar reads, data-dependent sizes), by op and by the source line that
called them. The ops are dispatched the same way on the CPU, so it runs on
any machine; ``projects/codetr/analysis/host_syncs.py`` says what is
counted and what is not.

Usage::

    python tools/analysis/count_host_syncs.py [CONFIG] [--size 256 320]
        [--batch-size 2] [--boxes 10] [--top 25] [--device cpu]

Prints the number of host reads per step, by op and by source line. With
``--device cuda`` it also runs the step under PyTorch's sync debug mode and
lists every synchronising call by source line, blocking host-to-device
copies included (``new_tensor(list)``), which the CPU count cannot see.
"""
import argparse
import os.path as osp
import sys

try:
    from projects.codetr.analysis import REPO_ROOT
    from projects.codetr.analysis.host_syncs import report
except ModuleNotFoundError as err:  # the plugin or a dependency is missing
    sys.exit(f'error: {err}. Install the codetr plugin and its dependencies: '
             '`bash tools/install.sh` from the repository root.')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        'config',
        nargs='?',
        default=osp.join(REPO_ROOT, 'configs',
                         'co_deformable_detr_r50_1x_coco.py'))
    parser.add_argument('--size', type=int, nargs=2, default=(256, 320),
                        metavar=('H', 'W'))
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument('--boxes', type=int, default=10,
                        help='random ground-truth boxes per image')
    parser.add_argument('--top', type=int, default=25,
                        help='source lines to list')
    parser.add_argument('--device', default='cpu')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    report(args.config, args.size, args.batch_size, args.boxes, args.top,
           args.device)


if __name__ == '__main__':
    main()
