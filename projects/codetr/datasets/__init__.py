"""Datasets for Co-DETR experiments."""
from .synthetic_shapes import (SHAPES_CLASSES, SHAPES_METAINFO, SHAPES_PALETTE,
                               ShapesConfig, generate_shapes_dataset,
                               generate_split, render_image)

__all__ = [
    'SHAPES_CLASSES', 'SHAPES_METAINFO', 'SHAPES_PALETTE', 'ShapesConfig',
    'generate_shapes_dataset', 'generate_split', 'render_image'
]
# Registers RobustLoadImageFromFile, which tools/train.py and tools/test.py
# put into the pipelines (and so into the configs they dump).
from .robust_loading import RobustLoadImageFromFile  # noqa: E402,F401
