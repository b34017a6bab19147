"""Parts that make the heads fast without changing what they compute:
mmdet's task modules with fewer host reads and launches (an anchor
generator that caches, a MaxIoU assigner without device reads, box
overlaps, a box decoder and the box match costs without host copies, the
ATSS assignment of a whole batch at once, an RoI extractor that reads
once instead of once per level), the RPN/ATSS losses over all levels at
once, and the level shapes the transformer and mmcv's deformable
attention share. Each is checked against the mmdet component it replaces
(see ``docs/design.md``, "Speed-ups"). Besides, a random sampler with
mmdet's distribution that draws from the device's generator."""
from .batched_atss_assigner import BatchedATSSAssigner
from .cached_anchor_generator import CachedAnchorGenerator
from .device_random_sampler import DeviceRandomSampler
from .level_batching import levels_side_by_side
from .level_shapes import host_level_sizes, level_shape_tensors
from .level_sorted_roi_extractor import LevelSortedRoIExtractor
from .sync_free_coder import SyncFreeDeltaXYWHBBoxCoder
from .sync_free_match_costs import SyncFreeBBoxL1Cost, SyncFreeIoUCost
from .sync_free_max_iou_assigner import SyncFreeMaxIoUAssigner
from .sync_free_overlaps import SyncFreeBboxOverlaps2D, box_overlaps

__all__ = [
    'BatchedATSSAssigner', 'CachedAnchorGenerator', 'DeviceRandomSampler',
    'LevelSortedRoIExtractor',
    'SyncFreeBBoxL1Cost', 'SyncFreeBboxOverlaps2D',
    'SyncFreeDeltaXYWHBBoxCoder', 'SyncFreeIoUCost',
    'SyncFreeMaxIoUAssigner', 'box_overlaps',
    'host_level_sizes', 'level_shape_tensors',
    'levels_side_by_side'
]
