"""Drawing of the synthetic shapes: class outlines, colours, background
textures and shaded painting (numpy and OpenCV only).

Used by :mod:`synthetic_shapes`, which places the objects, writes the
images and their COCO annotations. Every function draws from the
``numpy.random.Generator`` it is given, so an image depends only on that
generator's seed.
"""
import colorsys
import math
from typing import List, Optional, Tuple

import cv2
import numpy as np

SHAPES_CLASSES: Tuple[str, ...] = ('circle', 'square', 'triangle', 'star',
                                   'cross', 'ring')
# Base colour (RGB) of each class; hues are >= 40 degrees apart, more than
# twice the per-object hue jitter.
SHAPES_PALETTE: List[Tuple[int, int, int]] = [(220, 40, 40), (40, 170, 60),
                                              (40, 80, 230), (240, 200, 30),
                                              (190, 50, 200), (30, 200, 210)]


# ----------------------------------------------------------------- shapes --
def regular_polygon(n: int,
                    radius: float = 1.0,
                    phase: float = 0.0) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(n) / n
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def unit_shape(name: str, rng: np.random.Generator,
               n_round: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Outline (and hole) of a shape around the origin, about [-1, 1]^2.

    Returns:
        tuple: ``(outer, hole)``, float arrays of shape (N, 2) as (x, y);
        ``hole`` is None except for the ring.
    """
    if name == 'circle':
        return regular_polygon(n_round), None
    if name == 'square':
        return regular_polygon(4, phase=np.pi / 4), None
    if name == 'triangle':
        return regular_polygon(3, phase=-np.pi / 2), None
    if name == 'star':
        pts = regular_polygon(10, phase=-np.pi / 2)
        pts[1::2] *= rng.uniform(0.38, 0.5)
        return pts, None
    if name == 'cross':
        a = rng.uniform(0.25, 0.38)  # half width of an arm
        return np.array([(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a),
                         (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a),
                         (-a, -a)],
                        dtype=np.float64), None
    if name == 'ring':
        return regular_polygon(n_round), regular_polygon(
            n_round, rng.uniform(0.45, 0.65))
    raise ValueError(f'Unknown shape {name!r}; known: {SHAPES_CLASSES}.')


def object_color(rng: np.random.Generator, label: int,
                 color_noise: float) -> np.ndarray:
    """Jittered class colour, RGB floats in [0, 1]."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in SHAPES_PALETTE[label]))
    h = rng.uniform() if rng.uniform() < color_noise else \
        (h + rng.uniform(-0.025, 0.025)) % 1.0
    s = float(np.clip(s * rng.uniform(0.8, 1.05), 0.55, 1.0))
    v = float(np.clip(v * rng.uniform(0.75, 1.05), 0.5, 1.0))
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32)


# ------------------------------------------------------------- background --
def muted_color(rng: np.random.Generator) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0, 0.45),
                              rng.uniform(0.15, 0.95))
    return np.array(rgb, dtype=np.float32)


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Random texture, float32 RGB (h, w, 3) in [0, 1]."""
    c1, c2 = muted_color(rng), muted_color(rng)
    yy, xx = np.ogrid[0:h, 0:w]
    theta = rng.uniform(0, np.pi)
    u = (xx * np.cos(theta) + yy * np.sin(theta)).astype(np.float32)
    kind = rng.choice(['gradient', 'noise', 'stripes', 'checker', 'blobs'])
    if kind == 'gradient':
        t = (u - u.min()) / max(float(u.max() - u.min()), 1.0)
    elif kind == 'noise':
        cell = rng.uniform(8, 80)
        low = rng.uniform(size=(int(h / cell) + 2, int(w / cell) + 2))
        t = np.clip(
            cv2.resize(
                low.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC),
            0, 1)
    elif kind == 'stripes':
        t = 0.5 + 0.5 * np.sin(u * (2 * np.pi / rng.uniform(6, 60)))
        if rng.uniform() < 0.5:  # hard-edged stripes
            t = (t > 0.5).astype(np.float32)
    elif kind == 'checker':
        cell = rng.uniform(8, 64)
        v = (-xx * np.sin(theta) + yy * np.cos(theta)).astype(np.float32)
        t = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    else:  # blobs: blurred ellipses, clutter that is not a class shape
        img = np.empty((h, w, 3), np.float32)
        img[:] = c1
        for _ in range(rng.integers(5, 25)):
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(4, max(5, w // 4))),
                    int(rng.integers(4, max(5, h // 4))))
            cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360,
                        muted_color(rng).tolist(), -1, cv2.LINE_AA)
        return cv2.GaussianBlur(img, (0, 0), rng.uniform(2, 6))
    t = np.broadcast_to(t, (h, w))[..., None]
    return (c1 * (1 - t) + c2 * t).astype(np.float32)


def paint(rng: np.random.Generator, roi: np.ndarray, alpha: np.ndarray,
          color: np.ndarray, size: float) -> None:
    """Blend a shaded object with an optional darker inner outline into
    ``roi`` (float32 RGB, modified in place) using the anti-aliased
    ``alpha`` (uint8)."""
    rh, rw = alpha.shape
    yy, xx = np.ogrid[0:rh, 0:rw]
    d = rng.uniform(0, 2 * np.pi)
    shade = 1 + rng.uniform(-0.3, 0.3) * ((xx - rw / 2) * math.cos(d) +
                                          (yy - rh / 2) * math.sin(d)) / size
    fill = color * shade.astype(np.float32)[..., None]
    if size >= 16 and rng.uniform() < 0.6:
        # The outline is drawn inside the shape (erosion of its mask), so
        # the box stays the true extent.
        t = max(1, round(size / 20))
        inner = cv2.erode(alpha, np.ones((2 * t + 1, 2 * t + 1), np.uint8))
        ratio = (inner.astype(np.float32) / 255)[..., None]
        fill = fill * ratio + color * rng.uniform(0.35, 0.6) * (1 - ratio)
    a = (alpha.astype(np.float32) / 255)[..., None]
    roi[:] = roi * (1 - a) + np.clip(fill, 0, 1) * a
