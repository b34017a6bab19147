"""mmdet's 2-D box overlaps without its copy from the host.

mmdet's ``bbox_overlaps`` bounds the union (and the enclosing area) below
by ``union.new_tensor([eps])``: a copy from pageable host memory, which
PyTorch follows with a synchronisation of the stream, so on a GPU every
call makes the host wait until the GPU has finished all queued work. The
batched assigners call it once per step each (RPN, RoI head, ATSS).

:func:`box_overlaps` is mmdet's function operation for operation, with the
bound applied as ``clamp(min=eps)``: the same values, bit for bit (NaN
propagates through both), with nothing copied from the host.
:class:`SyncFreeBboxOverlaps2D` is ``BboxOverlaps2D`` on top of it, and
:func:`sync_free_calculator` swaps a plain ``BboxOverlaps2D`` for it.
"""
import torch
from mmdet.models.task_modules.assigners import BboxOverlaps2D
from mmdet.registry import TASK_UTILS
from mmdet.structures.bbox import get_box_tensor
from mmdet.structures.bbox.bbox_overlaps import fp16_clamp
from torch import Tensor

MODES = ('iou', 'iof', 'giou')


def box_overlaps(bboxes1: Tensor,
                 bboxes2: Tensor,
                 mode: str = 'iou',
                 is_aligned: bool = False,
                 eps: float = 1e-6) -> Tensor:
    """``mmdet.structures.bbox.bbox_overlaps``, without a host copy.

    Args:
        bboxes1 (Tensor): (..., m, 4) (x1, y1, x2, y2).
        bboxes2 (Tensor): (..., n, 4) (x1, y1, x2, y2); n = m when
            ``is_aligned``.
        mode (str): 'iou', 'iof' (over ``bboxes1``'s area) or 'giou'.
        is_aligned (bool): Pair the boxes row by row.
        eps (float): Lower bound of the union and the enclosing area.

    Returns:
        Tensor: (..., m, n), or (..., m) when aligned.
    """
    if mode not in MODES:
        raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
    if bboxes1.size(-1) not in (0, 4) or bboxes2.size(-1) not in (0, 4):
        raise ValueError('boxes must be (..., 4) (x1, y1, x2, y2), got '
                         f'{tuple(bboxes1.shape)} and {tuple(bboxes2.shape)}')
    batch_shape = bboxes1.shape[:-2]
    if bboxes2.shape[:-2] != batch_shape:
        raise ValueError('boxes must share their batch dimensions, got '
                         f'{tuple(bboxes1.shape)} and {tuple(bboxes2.shape)}')
    rows, cols = bboxes1.size(-2), bboxes2.size(-2)
    if is_aligned and rows != cols:
        raise ValueError(f'aligned overlaps need as many boxes on both '
                         f'sides, got {rows} and {cols}')
    if rows * cols == 0:
        return bboxes1.new(batch_shape + ((rows, ) if is_aligned else
                                          (rows, cols)))
    area1 = (bboxes1[..., 2] - bboxes1[..., 0]) * (
        bboxes1[..., 3] - bboxes1[..., 1])
    area2 = (bboxes2[..., 2] - bboxes2[..., 0]) * (
        bboxes2[..., 3] - bboxes2[..., 1])
    if is_aligned:
        b1, b2 = bboxes1, bboxes2
    else:  # every pair: (..., m, 1, 4) against (..., 1, n, 4)
        b1, b2 = bboxes1[..., :, None, :], bboxes2[..., None, :, :]
        area1, area2 = area1[..., None], area2[..., None, :]
    lt = torch.maximum(b1[..., :2], b2[..., :2])
    rb = torch.minimum(b1[..., 2:], b2[..., 2:])
    wh = fp16_clamp(rb - lt, min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = area1 + area2 - overlap if mode != 'iof' else area1
    # mmdet: torch.max(union, union.new_tensor([eps])), the same values
    union = union.clamp(min=eps)
    ious = overlap / union
    if mode != 'giou':
        return ious
    enclose_wh = fp16_clamp(
        torch.maximum(b1[..., 2:], b2[..., 2:]) -
        torch.minimum(b1[..., :2], b2[..., :2]),
        min=0)
    enclose_area = (enclose_wh[..., 0] * enclose_wh[..., 1]).clamp(min=eps)
    return ious - (enclose_area - union) / enclose_area


@TASK_UTILS.register_module()
class SyncFreeBboxOverlaps2D(BboxOverlaps2D):
    """mmdet's ``BboxOverlaps2D`` through :func:`box_overlaps`: the same
    overlaps, with no copy from the host (its ``dtype='fp16'`` mode runs
    mmdet's code)."""

    def __call__(self,
                 bboxes1,
                 bboxes2,
                 mode: str = 'iou',
                 is_aligned: bool = False) -> Tensor:
        """Overlaps of (..., m, 4 or 5) and (..., n, 4 or 5) boxes (a score
        column is dropped), as ``BboxOverlaps2D.__call__``."""
        if self.dtype == 'fp16':
            return super().__call__(bboxes1, bboxes2, mode, is_aligned)
        bboxes1, bboxes2 = get_box_tensor(bboxes1), get_box_tensor(bboxes2)
        return box_overlaps(bboxes1[..., :4], bboxes2[..., :4], mode,
                            is_aligned)


# calculators that compute mmdet's BboxOverlaps2D values
PLAIN_OVERLAPS = (BboxOverlaps2D, SyncFreeBboxOverlaps2D)


def sync_free_calculator(iou_calculator):
    """:class:`SyncFreeBboxOverlaps2D` in place of a plain mmdet
    ``BboxOverlaps2D`` (the same values); any other calculator as it is."""
    if type(iou_calculator) is BboxOverlaps2D:
        return SyncFreeBboxOverlaps2D(iou_calculator.scale,
                                      iou_calculator.dtype)
    return iou_calculator
