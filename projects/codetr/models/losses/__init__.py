"""Losses that reproduce a DETR codebase's arithmetic where mmdet's differs,
and mmdet's losses computed with fewer operations."""
from .analytic_giou_loss import AnalyticGIoULoss
from .normalized_giou_loss import NormalizedGIoULoss

__all__ = ['AnalyticGIoULoss', 'NormalizedGIoULoss']
