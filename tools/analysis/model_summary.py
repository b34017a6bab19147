"""Parameter count and training-step time of a config's model.

Builds the model of CONFIG (pretrained weights off, so nothing is
downloaded), prints its parameters per top-level module, then times full
training steps (forward, all losses, backward, AdamW step) on generated
images and boxes.

Example::

    python tools/analysis/model_summary.py \
        configs/co_deformable_detr_r50_1x_coco.py --img-size 512 --steps 3
"""
import argparse
import sys

import torch

try:
    from projects.codetr.analysis.model_summary import summarize
except ModuleNotFoundError as err:  # the plugin or a dependency is missing
    sys.exit(f'error: {err}. Install the codetr plugin and its dependencies: '
             '`bash tools/install.sh` from the repository root.')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('--img-size', type=int, nargs=2, default=[512, 512],
                        metavar=('H', 'W'))
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument('--boxes', type=int, default=8,
                        help='ground-truth boxes per image')
    parser.add_argument('--steps', type=int, default=3,
                        help='timed steps (after one warm-up step)')
    parser.add_argument('--device', default='cuda' if
                        torch.cuda.is_available() else 'cpu')
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    summarize(args.config, args.img_size, args.batch_size, args.boxes,
              args.steps, args.device, args.seed)


if __name__ == '__main__':
    main()
