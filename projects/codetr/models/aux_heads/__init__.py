"""Auxiliary (one-to-many) heads: mmdet heads that, besides their own
losses, report the positive coordinates their assigner chose
(:class:`~..positive_coords.PositiveCoords`); and the RoI head's box head
with losses that read nothing from the device."""
from .co_atss_head import CoATSSHead
from .co_fcos_head import CoFCOSHead
from .co_rpn_head import CoRPNHead
from .co_standard_roi_head import CoStandardRoIHead
from .sync_free_bbox_head import SyncFreeShared2FCBBoxHead

__all__ = [
    'CoATSSHead', 'CoFCOSHead', 'CoRPNHead', 'CoStandardRoIHead',
    'SyncFreeShared2FCBBoxHead'
]
