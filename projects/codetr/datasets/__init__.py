"""Datasets for Co-DETR experiments."""
from .synthetic_shapes import (SHAPES_CLASSES, SHAPES_METAINFO, SHAPES_PALETTE,
                               ShapesConfig, generate_shapes_dataset,
                               generate_split, render_image)

__all__ = [
    'SHAPES_CLASSES', 'SHAPES_METAINFO', 'SHAPES_PALETTE', 'ShapesConfig',
    'generate_shapes_dataset', 'generate_split', 'render_image'
]
