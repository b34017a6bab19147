"""Synthetic COCO-format shapes dataset for fast, checkable detector training.

Each image is a textured background (gradient, smooth noise, stripes,
checkerboard or blurred blobs) with up to ``max_objects`` filled shapes of six
classes (:data:`SHAPES_CLASSES`). Every class has its own hue, jittered per
object, and a fraction of objects (``color_noise``) gets a random hue, so a
detector has to look at the shape as well as the colour.

Choices that matter for training and evaluation:

* Objects lie fully inside the image; a box is the full extent of its
  object, ``[x, y, w, h]`` in COCO continuous pixel coordinates (pixel ``i``
  spans ``[i, i + 1)``), also where later objects cover part of it.
* Occlusion is bounded when objects are placed: a new object is rejected
  (and placed elsewhere, or skipped) if it would leave an earlier object less
  than ``min_visible`` (default 30 %) visible. So no object is occluded by
  more than 70 %, and no unlabelled fragments of dropped objects remain.
* ``segmentation`` is the outer polygon of the object (a ring's hole is not
  encoded); ``area`` is the pixel count of the full, unoccluded object.
* Exactly ``round(empty_fraction * n)`` images per split (at least one when the
  fraction is > 0) have no objects.
* Everything is drawn from ``numpy.random.default_rng([seed, crc32(split),
  index])``: an image depends only on (config, split, index), not on the
  order or number of worker processes, and the splits never share images.
"""
import hashlib
import json
import math
import multiprocessing
import os
import os.path as osp
import re
import time
import zlib
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np

try:  # as projects.codetr.datasets.synthetic_shapes
    from . import shapes_drawing as drawing
except ImportError:  # as a top-level module (tools/generate_shapes_dataset.py)
    import shapes_drawing as drawing

SHAPES_CLASSES = drawing.SHAPES_CLASSES
SHAPES_PALETTE = drawing.SHAPES_PALETTE

# For configs: ``metainfo=SHAPES_METAINFO``. mmdet's visualizer needs the
# palette as a list (a tuple is read as one colour for all classes).
SHAPES_METAINFO = dict(classes=SHAPES_CLASSES, palette=SHAPES_PALETTE)

META_FILE = 'shapes_meta.json'
# Any edit of this file or of the drawing module changes the data, so an
# existing dataset is reused only if it was drawn by the same source.
_SOURCES = (__file__, drawing.__file__)
GENERATOR_VERSION = hashlib.sha1(b''.join(
    open(path, 'rb').read() for path in _SOURCES)).hexdigest()[:12]
_IMAGE_NAME = re.compile(r'^\d{6}\.jpg$')
_MAX_SIZE_FRAC = 0.5  # largest object / shorter image side


@dataclass(frozen=True)
class ShapesConfig:
    """Parameters of the generator; together with the split they fix every
    image.

    Args:
        seed: Base seed of all random draws.
        min_side / max_side: Range of the longer image side in pixels; the
            shorter side is at least ``min_side`` too.
        max_aspect: Largest ratio of the longer to the shorter side.
        min_size: Smallest object (longer box side) in pixels.
        max_size: Largest object in pixels; at most (and by default) half
            the shorter image side.
        mean_objects: Mean number of objects tried in a non-empty image.
        max_objects: Most objects tried in one image.
        empty_fraction: Fraction of images without objects.
        min_visible: Smallest visible fraction of an occluded object.
        color_noise: Probability that an object gets a random hue.
        jpeg_quality: JPEG quality of the written images.
    """
    seed: int = 0
    min_side: int = 160
    max_side: int = 640
    max_aspect: float = 2.0
    min_size: float = 10.0
    max_size: Optional[float] = None
    mean_objects: float = 4.0
    max_objects: int = 10
    empty_fraction: float = 0.07
    min_visible: float = 0.3
    color_noise: float = 0.15
    jpeg_quality: int = 92

    def __post_init__(self) -> None:
        if not 16 <= self.min_side <= self.max_side:
            raise ValueError(f'Need 16 <= min_side <= max_side, got '
                             f'{self.min_side}, {self.max_side}.')
        if not 2 <= self.min_size <= _MAX_SIZE_FRAC * self.min_side:
            raise ValueError(
                f'min_size={self.min_size} must be >= 2 and fit the smallest '
                f'image ({_MAX_SIZE_FRAC} * min_side = '
                f'{_MAX_SIZE_FRAC * self.min_side}); lower min_size or raise '
                'min_side.')
        if not 0 <= self.empty_fraction <= 1 or not 0 <= self.min_visible <= 1:
            raise ValueError('empty_fraction and min_visible must be in '
                             '[0, 1].')


# ----------------------------------------------------------------- images --
def _n_empty(num_images: int, fraction: float) -> int:
    if fraction <= 0 or num_images == 0:
        return 0
    return min(num_images, max(1, round(fraction * num_images)))


def _split_entropy(split: str) -> int:
    return zlib.crc32(split.encode())


def empty_image_indices(cfg: ShapesConfig, split: str,
                        num_images: int) -> List[int]:
    """Indices of the images of a split that get no objects (sorted)."""
    rng = np.random.default_rng([cfg.seed, _split_entropy(split)])
    n = _n_empty(num_images, cfg.empty_fraction)
    return sorted(rng.choice(num_images, n, replace=False).tolist())


def render_image(cfg: ShapesConfig, split: str, index: int,
                 empty: bool) -> Tuple[np.ndarray, List[dict]]:
    """Draw one image and its objects.

    Args:
        cfg: Generator parameters.
        split: Split name; part of the seed.
        index: Image index within the split; part of the seed.
        empty: Draw no objects.

    Returns:
        tuple: ``(image, objects)``. ``image`` is uint8 RGB (H, W, 3).
        ``objects`` are dicts with ``category_id`` (1..K), ``bbox``
        ``[x, y, w, h]``, ``area``, ``segmentation`` (one polygon) and
        ``visible`` (fraction of the object left uncovered).
    """
    rng = np.random.default_rng([cfg.seed, _split_entropy(split), index])
    long_side = rng.uniform(cfg.min_side, cfg.max_side)
    short_side = max(
        cfg.min_side,
        long_side / math.exp(rng.uniform(0, math.log(cfg.max_aspect))))
    h, w = (round(long_side), round(short_side))
    if rng.uniform() < 0.5:
        h, w = w, h
    img = drawing.background(rng, h, w)
    owner = np.full((h, w), -1, np.int32)  # index of the object on top
    objects: List[dict] = []
    full_px: List[int] = []
    visible_px: List[int] = []
    n_try = 1 + rng.poisson(max(cfg.mean_objects - 1, 0))
    n_try = 0 if empty else min(cfg.max_objects, n_try)
    max_size = _MAX_SIZE_FRAC * min(h, w)
    if cfg.max_size is not None:
        max_size = min(max_size, cfg.max_size)
    max_size = max(max_size, cfg.min_size)
    for _ in range(n_try):
        label = int(rng.integers(len(SHAPES_CLASSES)))
        # Log-size from Beta(2.5, 1.6): by COCO's area ranges ~28% small,
        # 58% medium, 14% large.
        size = cfg.min_size * (max_size / cfg.min_size)**rng.beta(2.5, 1.6)
        obj = _place_object(rng, cfg, img, owner, full_px, visible_px, label,
                            size)
        if obj is not None:
            objects.append(obj)
    for obj, full, vis in zip(objects, full_px, visible_px):
        obj['visible'] = vis / full
    img += rng.normal(0, rng.uniform(0, 0.03), img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), objects


def _place_object(rng: np.random.Generator, cfg: ShapesConfig, img: np.ndarray,
                  owner: np.ndarray, full_px: List[int], visible_px: List[int],
                  label: int, size: float) -> Optional[dict]:
    """Try a few positions for one object; draw it at the first that keeps
    every earlier object at least ``cfg.min_visible`` visible.

    ``img``, ``owner``, ``full_px`` and ``visible_px`` are updated in place.
    Returns the annotation, or None if no position was found.
    """
    h, w = owner.shape
    outer, hole = drawing.unit_shape(
        SHAPES_CLASSES[label], rng, n_round=int(np.clip(size * 0.8, 16, 64)))
    stretch = math.exp(rng.uniform(-1, 1) * math.log(1.35))
    rot = rng.uniform(0, 2 * np.pi)
    mat = np.array([[math.cos(rot), -math.sin(rot)],
                    [math.sin(rot), math.cos(rot)]]) @ np.diag(
                        [stretch**0.5, stretch**-0.5])
    outer = outer @ mat.T
    lo, hi = outer.min(0), outer.max(0)
    scale = size / float((hi - lo).max())
    outer = (outer - lo) * scale
    hole = None if hole is None else (hole @ mat.T - lo) * scale
    bw, bh = (hi - lo) * scale
    color = drawing.object_color(rng, label, cfg.color_noise)
    for _ in range(10):
        x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        ix0, iy0 = int(x0), int(y0)
        ix1, iy1 = min(w, math.ceil(x0 + bw)), min(h, math.ceil(y0 + bh))
        # Vertices are in continuous coordinates; OpenCV puts pixel centres
        # on integers, hence the -0.5. shift=4 keeps 1/16 px precision.
        offset = np.array([x0 - ix0 - 0.5, y0 - iy0 - 0.5])
        alpha = np.zeros((iy1 - iy0, ix1 - ix0), np.uint8)
        for poly, value in ((outer, 255), (hole, 0)):
            if poly is not None:
                pts = np.round((poly + offset) * 16).astype(np.int32)
                cv2.fillPoly(alpha, [pts], value, cv2.LINE_AA, shift=4)
        mask = alpha >= 128
        n_px = int(mask.sum())
        if n_px == 0:
            return None
        roi_owner = owner[iy0:iy1, ix0:ix1]
        below = roi_owner[mask]
        covered = np.bincount(below[below >= 0], minlength=len(full_px))
        hit = np.nonzero(covered)[0]
        if any(visible_px[j] - covered[j] < cfg.min_visible * full_px[j]
               for j in hit):
            continue
        for j in hit:
            visible_px[j] -= int(covered[j])
        roi_owner[mask] = len(full_px)
        full_px.append(n_px)
        visible_px.append(n_px)
        drawing.paint(rng, img[iy0:iy1, ix0:ix1], alpha, color, size)
        poly = outer + (x0, y0)
        x, y = round(float(x0), 2), round(float(y0), 2)
        # min(): rounding must not push the box past the image border.
        bw = min(round(float(bw), 2), w - x)
        bh = min(round(float(bh), 2), h - y)
        return dict(
            category_id=label + 1,
            bbox=[x, y, bw, bh],
            area=float(n_px),
            segmentation=[np.round(poly, 2).ravel().tolist()])
    return None


# ---------------------------------------------------------------- dataset --
def _write_image(
        job: Tuple[ShapesConfig, str, int, bool, str]) -> Tuple[dict, list]:
    cfg, split, index, empty, img_dir = job
    image, objects = render_image(cfg, split, index, empty)
    file_name = f'{index:06d}.jpg'
    ok = cv2.imwrite(
        osp.join(img_dir, file_name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
        [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
    if not ok:
        raise OSError(f'Could not write {osp.join(img_dir, file_name)}; '
                      'check that the folder is writable.')
    h, w = image.shape[:2]
    return dict(file_name=file_name, width=w, height=h), objects


def generate_split(out_dir: str,
                   split: str,
                   num_images: int,
                   cfg: ShapesConfig,
                   workers: int = 1,
                   progress: Optional[Callable[[], None]] = None) -> dict:
    """Write ``<out_dir>/<split>/*.jpg`` and
    ``<out_dir>/annotations/instances_<split>.json``.

    Args:
        out_dir: Dataset root.
        split: Split name, e.g. ``'train'``.
        num_images: Number of images.
        cfg: Generator parameters.
        workers: Processes to draw images with; does not change the output.
        progress: Called once per finished image.

    Returns:
        dict: The COCO annotation dict that was written.
    """
    img_dir = osp.join(out_dir, split)
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)
    for name in os.listdir(img_dir):  # images left by a larger earlier run
        if _IMAGE_NAME.match(name) and int(name[:6]) >= num_images:
            os.remove(osp.join(img_dir, name))
    empty = set(empty_image_indices(cfg, split, num_images))
    jobs = [(cfg, split, i, i in empty, img_dir) for i in range(num_images)]
    records = []
    # One OpenCV thread per process: the processes already use every core.
    # 'spawn', not 'fork': forking a process whose other threads (OpenCV's,
    # torch's) hold locks can deadlock the children, e.g. inside pytest or
    # a training script that imported torch first.
    spawn = multiprocessing.get_context('spawn')
    with spawn.Pool(workers, cv2.setNumThreads, (1, )) if workers > 1 else \
            nullcontext() as pool:
        results = map(_write_image, jobs) if pool is None else pool.imap(
            _write_image, jobs, chunksize=8)
        for rec in results:
            records.append(rec)
            if progress is not None:
                progress()
    images, annotations = [], []
    for image_id, (info, objects) in enumerate(records, start=1):
        images.append(dict(id=image_id, **info))
        for obj in objects:
            del obj['visible']
            obj.update(id=len(annotations) + 1, image_id=image_id, iscrowd=0)
            annotations.append(obj)
    info = dict(
        description=f'Synthetic shapes, split {split}',
        version=GENERATOR_VERSION,
        generator=asdict(cfg))
    categories = [
        dict(id=i + 1, name=name, supercategory='shape')
        for i, name in enumerate(SHAPES_CLASSES)
    ]
    coco = dict(
        info=info,
        images=images,
        annotations=annotations,
        categories=categories)
    ann_file = osp.join(out_dir, 'annotations', f'instances_{split}.json')
    with open(ann_file, 'w') as f:
        json.dump(coco, f, separators=(',', ':'))
    return coco


def split_summary(coco: dict) -> dict:
    """Counts of one split: images, empty images, objects per class."""
    names = {c['id']: c['name'] for c in coco['categories']}
    per_class = {name: 0 for name in names.values()}
    for ann in coco['annotations']:
        per_class[names[ann['category_id']]] += 1
    used = {ann['image_id'] for ann in coco['annotations']}
    n_img = len(coco['images'])
    return dict(
        images=n_img, empty_images=n_img - len(used), objects=per_class)


def generate_shapes_dataset(
    out_dir: str,
    splits: Dict[str, int],
    cfg: Optional[ShapesConfig] = None,
    workers: int = 1,
    force: bool = False,
    progress: Optional[Callable[[str, int], Callable[[], None]]] = None
) -> Tuple[dict, bool]:
    """Generate every split, unless ``out_dir`` already holds the same one.

    The parameters, :data:`GENERATOR_VERSION` and a summary are written last
    to ``<out_dir>/shapes_meta.json``; a later call with equal parameters and
    version returns that summary without drawing anything (unless
    ``force``).

    Args:
        out_dir: Dataset root.
        splits: Number of images per split, e.g. ``{'train': 2000,
            'val': 200}``.
        cfg: Generator parameters; defaults to ``ShapesConfig()``.
        workers: Processes to draw images with.
        force: Regenerate even if the dataset exists.
        progress: ``progress(split, num_images)`` returns the per-image
            callback of that split.

    Returns:
        tuple: ``(summary, generated)``; the summary maps each split to
        :func:`split_summary` and has ``seconds``; ``generated`` is False
        when the existing dataset was kept.
    """
    cfg = ShapesConfig() if cfg is None else cfg
    meta_path = osp.join(out_dir, META_FILE)
    params = dict(
        version=GENERATOR_VERSION, config=asdict(cfg), splits=dict(splits))
    if not force and osp.isfile(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        ann_files = [
            osp.join(out_dir, 'annotations', f'instances_{s}.json')
            for s in splits
        ]
        if meta.get('params') == params and all(map(osp.isfile, ann_files)):
            return meta['summary'], False
    if osp.isfile(meta_path):
        os.remove(meta_path)  # an interrupted run must not look complete
    start = time.perf_counter()
    summary: dict = {}
    for split, num in splits.items():
        callback = None if progress is None else progress(split, num)
        coco = generate_split(out_dir, split, num, cfg, workers, callback)
        summary[split] = split_summary(coco)
    summary['seconds'] = round(time.perf_counter() - start, 2)
    with open(meta_path, 'w') as f:
        json.dump(dict(params=params, summary=summary), f, indent=1)
    return summary, True
