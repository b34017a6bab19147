"""Datasets for Co-DETR experiments."""
from .synthetic_shapes import (SHAPES_CLASSES, SHAPES_METAINFO, SHAPES_PALETTE,
                               ShapesConfig, generate_shapes_dataset,
                               generate_split, render_image)

__all__ = [
    'SHAPES_CLASSES', 'SHAPES_METAINFO', 'SHAPES_PALETTE', 'ShapesConfig',
    'generate_shapes_dataset', 'generate_split', 'render_image'
]
# Registers RobustLoadImageFromFile, which the configs' pipelines declare
# (and tools/train.py and tools/test.py put into pipelines that lack it).
from .robust_loading import RobustLoadImageFromFile  # noqa: E402,F401
