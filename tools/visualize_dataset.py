"""Draw the ground-truth boxes of a COCO-format dataset into one PNG grid.

Example::

    python tools/visualize_dataset.py \
        data/shapes/annotations/instances_val.json data/shapes/val \
        --out shapes_grid.png --num 16

Works for any COCO detection json (reads only ``images``, ``annotations``
and ``categories``); needs OpenCV and numpy only.
"""
import argparse
import colorsys
import json
import math
import os.path as osp
import random
import sys
from collections import defaultdict
from typing import Dict, List, Tuple

import cv2
import numpy as np


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Draw GT boxes of N images into a PNG grid.')
    parser.add_argument('ann_file', help='COCO annotation json')
    parser.add_argument(
        'img_dir', help='folder the file_names are relative to')
    parser.add_argument(
        '--out', default='dataset_grid.png', help='output PNG path')
    parser.add_argument('--num', type=int, default=16, help='images to draw')
    parser.add_argument(
        '--cols',
        type=int,
        default=0,
        help='grid columns (default: about square)')
    parser.add_argument(
        '--tile',
        type=int,
        default=320,
        help='longest side of one tile in pixels')
    parser.add_argument(
        '--shuffle',
        action='store_true',
        help='pick random images (with --seed) instead of the first ones')
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args()


def category_colors(cat_ids: List[int]) -> Dict[int, Tuple[int, int, int]]:
    """A well-separated BGR colour per category id (golden-ratio hues)."""
    colors = {}
    for i, cat_id in enumerate(sorted(cat_ids)):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.9, 1.0)
        colors[cat_id] = (int(b * 255), int(g * 255), int(r * 255))
    return colors


def draw_tile(img: np.ndarray, anns: List[dict], names: Dict[int, str],
              colors: Dict[int, Tuple[int, int, int]], tile: int,
              title: str) -> np.ndarray:
    """Resize ``img`` (BGR) to fit ``tile`` x ``tile`` and draw its boxes.

    Boxes are drawn after resizing so that lines stay one pixel sharp; each
    gets a black under-stroke to stay visible on any background.
    """
    scale = tile / max(img.shape[:2])
    h, w = round(img.shape[0] * scale), round(img.shape[1] * scale)
    canvas = np.full((tile + 18, tile, 3), 40, np.uint8)
    canvas[18:18 + h, :w] = cv2.resize(
        img, (w, h), interpolation=cv2.INTER_AREA)
    cv2.putText(canvas, title, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                (255, 255, 255), 1, cv2.LINE_AA)
    view = canvas[18:]
    for ann in anns:
        x, y, bw, bh = (v * scale for v in ann['bbox'])
        p1 = (int(round(x)), int(round(y)))
        p2 = (int(round(x + bw)) - 1, int(round(y + bh)) - 1)
        color = colors[ann['category_id']]
        cv2.rectangle(view, p1, p2, (0, 0, 0), 3)
        cv2.rectangle(view, p1, p2, color, 1)
        label = names[ann['category_id']]
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.35, 1)
        ty = p1[1] - 2 if p1[1] - th - 3 >= 0 else p1[1] + th + 2
        cv2.rectangle(view, (p1[0], ty - th - 1), (p1[0] + tw + 2, ty + 2),
                      color, -1)
        cv2.putText(view, label, (p1[0] + 1, ty), cv2.FONT_HERSHEY_SIMPLEX,
                    0.35, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def main() -> None:
    args = parse_args()
    with open(args.ann_file) as f:
        coco = json.load(f)
    names = {c['id']: c['name'] for c in coco['categories']}
    colors = category_colors(list(names))
    per_image = defaultdict(list)
    for ann in coco['annotations']:
        per_image[ann['image_id']].append(ann)
    images = list(coco['images'])
    if args.shuffle:
        random.Random(args.seed).shuffle(images)
    images = images[:args.num]
    if not images:
        sys.exit(f'{args.ann_file} lists no images.')
    cols = args.cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    th, tw = args.tile + 18, args.tile
    grid = np.full((rows * (th + 4), cols * (tw + 4), 3), 255, np.uint8)
    for k, info in enumerate(images):
        path = osp.join(args.img_dir, info['file_name'])
        img = cv2.imread(path)
        if img is None:
            sys.exit(f'Cannot read {path}; is img_dir the folder that '
                     "the json's file_name values are relative to?")
        anns = per_image[info['id']]
        title = (f"{info['file_name']} {info['width']}x{info['height']} "
                 f'{len(anns)} obj')
        r, c = divmod(k, cols)
        y0, x0 = r * (th + 4), c * (tw + 4)
        grid[y0:y0 + th, x0:x0 + tw] = draw_tile(img, anns, names, colors,
                                                 args.tile, title)
    if not cv2.imwrite(args.out, grid):
        sys.exit(f'Could not write {args.out}; does its folder exist?')
    print(f'Wrote {args.out}: {len(images)} images, '
          f'{sum(len(per_image[i["id"]]) for i in images)} boxes')


if __name__ == '__main__':
    main()
