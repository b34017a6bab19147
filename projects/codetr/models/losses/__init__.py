"""Losses that reproduce a DETR codebase's arithmetic where mmdet's differs."""
from .normalized_giou_loss import NormalizedGIoULoss

__all__ = ['NormalizedGIoULoss']
