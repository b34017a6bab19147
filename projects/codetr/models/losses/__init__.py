"""Losses that reproduce a DETR codebase's arithmetic where mmdet's differs,
and mmdet's losses computed with fewer operations or without host reads."""
from .analytic_giou_loss import AnalyticGIoULoss
from .normalized_giou_loss import NormalizedGIoULoss
from .sync_free_losses import (SyncFreeCrossEntropyLoss, SyncFreeFocalLoss,
                               SyncFreeL1Loss, SyncFreeQualityFocalLoss)

__all__ = [
    'AnalyticGIoULoss', 'NormalizedGIoULoss', 'SyncFreeCrossEntropyLoss',
    'SyncFreeFocalLoss', 'SyncFreeL1Loss', 'SyncFreeQualityFocalLoss'
]
