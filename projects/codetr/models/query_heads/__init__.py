"""Query heads: one-to-one (Hungarian) DETR heads that own their
transformer and also decode the auxiliary heads' positive queries."""
from .co_deform_detr_head import CoDeformDETRHead

__all__ = ['CoDeformDETRHead']
