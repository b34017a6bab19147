"""Deployment of Co-DETR: ONNX export of the inference model."""
from .export import (DEFAULT_OPSET, MIN_OPSET, check_opset, export_onnx,
                     load_detector)
from .onnx_model import CoDETROnnxModel, build_onnx_wrapper, check_exportable

__all__ = [
    'CoDETROnnxModel', 'build_onnx_wrapper', 'check_exportable',
    'check_opset', 'export_onnx', 'load_detector', 'DEFAULT_OPSET',
    'MIN_OPSET'
]
