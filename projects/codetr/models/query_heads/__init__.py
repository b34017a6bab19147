"""Query heads: one-to-one (Hungarian) DETR heads that own their
transformer and also decode the auxiliary heads' positive queries."""
from .batched_detr_loss import BatchedMatchingDETRHead
from .co_deform_detr_head import CoDeformDETRHead
from .co_dino_head import CoDINOHead
from .co_query_head_mixin import CoQueryHeadMixin

__all__ = [
    'BatchedMatchingDETRHead', 'CoDeformDETRHead', 'CoDINOHead',
    'CoQueryHeadMixin'
]
