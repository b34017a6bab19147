"""Generate the synthetic COCO-format shapes dataset.

Example::

    python tools/generate_shapes_dataset.py --out data/shapes \
        --num-train 2000 --num-val 200 --seed 0

Writes ``<out>/{train,val}/*.jpg``, ``<out>/annotations/instances_{train,
val}.json`` and ``<out>/shapes_meta.json``. Running it again with the same
parameters keeps the existing dataset (use ``--force`` to redraw it).
"""
import argparse
import importlib
import os
import os.path as osp
import sys
import time
from dataclasses import fields
from typing import Sequence

from mmengine.utils import ProgressBar


def _load_generator():
    """Import ``projects/codetr/datasets/synthetic_shapes.py`` on its own.

    Importing it as ``projects.codetr.datasets`` would run
    ``projects/codetr/__init__.py``, which registers the models and so imports
    torch, mmcv and mmdet; the generator needs only numpy and OpenCV. Its
    folder goes on ``sys.path`` (rather than loading the file by path) so that
    worker processes started with 'spawn' can import it too.
    """
    sys.path.insert(
        0,
        osp.join(
            osp.dirname(osp.dirname(osp.abspath(__file__))), 'projects',
            'codetr', 'datasets'))
    return importlib.import_module('synthetic_shapes')


# Help of each ShapesConfig field that the command line sets; option
# --min-size sets field min_size.
_CONFIG_HELP = dict(
    seed='base seed of all random draws',
    min_side='smallest image side in pixels',
    max_side='largest image side in pixels',
    max_aspect='largest ratio of the longer to the shorter image side',
    min_size='smallest object (longer box side) in pixels',
    max_size='largest object in pixels; None: half the shorter image side, '
    'which also caps any value',
    mean_objects='mean number of objects tried in a non-empty image',
    max_objects='most objects tried in one image',
    empty_fraction='fraction of images without objects',
    min_visible='smallest visible fraction of an occluded object',
    color_noise='probability that an object gets a random hue',
    jpeg_quality='JPEG quality')


def parse_args(config_cls) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Generate a synthetic COCO-format shapes dataset.')
    parser.add_argument('--out', default='data/shapes', help='dataset root')
    parser.add_argument('--num-train', type=int, default=2000)
    parser.add_argument('--num-val', type=int, default=200)
    for f in fields(config_cls):
        parser.add_argument(
            '--' + f.name.replace('_', '-'),
            type=int if f.type is int else float,
            default=f.default,
            help=f'{_CONFIG_HELP[f.name]} (default: {f.default})')
    parser.add_argument(
        '--workers',
        type=int,
        default=min(8,
                    os.cpu_count() or 1),
        help='processes (the output does not depend on it)')
    parser.add_argument(
        '--force',
        action='store_true',
        help='regenerate even if the dataset exists')
    return parser.parse_args()


def format_summary(summary: dict, splits: Sequence[str],
                   classes: Sequence[str]) -> str:
    """Table of images, empty images and objects per class of each split."""
    header = f'{"split":<8}{"images":>8}{"empty":>7}{"objects":>9}'
    lines = [header + ''.join(f'{c:>9}' for c in classes)]
    for split in splits:
        s = summary[split]
        counts = [s['objects'].get(c, 0) for c in classes]
        row = f'{split:<8}{s["images"]:>8}{s["empty_images"]:>7}'
        lines.append(row + f'{sum(counts):>9}' + ''.join(f'{n:>9}'
                                                         for n in counts))
    return '\n'.join(lines)


def main() -> None:
    shapes = _load_generator()
    args = parse_args(shapes.ShapesConfig)
    names = [f.name for f in fields(shapes.ShapesConfig)]
    try:
        cfg = shapes.ShapesConfig(**{k: getattr(args, k) for k in names})
    except ValueError as e:
        sys.exit(f'Invalid option: {e}')
    splits = dict(train=args.num_train, val=args.num_val)

    def progress(split, num):
        print(f'{split}: {num} images')
        bar = ProgressBar(num)
        step = max(1, num // 50)  # redraw in 2% steps; logs stay short
        done = 0

        def update():
            nonlocal done
            done += 1
            if done % step == 0 or done == num:
                bar.update(done - bar.completed)
            if done == num:
                print()

        return update

    start = time.perf_counter()
    summary, generated = shapes.generate_shapes_dataset(
        args.out,
        splits,
        cfg,
        workers=args.workers,
        force=args.force,
        progress=progress)
    if generated:
        print(f'Wrote {osp.abspath(args.out)} in '
              f'{time.perf_counter() - start:.1f} s '
              f'({args.workers} workers)')
    else:
        print(f'{osp.abspath(args.out)} already holds this dataset '
              f'(generated in {summary["seconds"]} s); --force redraws it.')
    print(format_summary(summary, list(splits), shapes.SHAPES_CLASSES))


if __name__ == '__main__':
    main()
