"""mmcv's ``nms`` and ``soft_nms`` for float64 boxes as well.

mmcv's NMS kernels read their inputs as float32 (the CPU ``nms`` and
``soft_nms`` kernels and the CUDA ``nms`` kernel), so a float64 model (the
parity tests run one against the released code's float64 outputs,
``tests/data/parity/README.md``) cannot reach its detections through them.
:func:`nms` and :func:`soft_nms` take the same arguments and return the
same values as mmcv's functions: any dtype but float64 goes to mmcv
unchanged (bit-identical float32 results); float64 runs the algorithm of
mmcv's CPU kernels, step for step, in float64.

mmcv's ``batched_nms`` accepts a callable as ``nms_cfg['type']``;
:func:`any_dtype_nms_cfg` turns a head's test config into one that names
these functions, which is how the heads route mmdet's post-processing here
without changing mmdet.
"""
import copy
from typing import Optional, Tuple

import numpy as np
import torch
from mmcv import ops as mmcv_ops
from mmengine.utils import deprecated_api_warning
from torch import Tensor

SOFT_NMS_METHODS = {'naive': 0, 'linear': 1, 'gaussian': 2}


def _as_float32(value: float) -> float:
    """``value`` rounded as mmcv's kernels receive their ``float``
    thresholds (the comparisons then promote it back)."""
    return float(np.float32(value))


@deprecated_api_warning({'iou_thr': 'iou_threshold'})
def nms(boxes: Tensor,
        scores: Tensor,
        iou_threshold: float,
        offset: int = 0,
        score_threshold: float = 0,
        max_num: int = -1) -> Tuple[Tensor, Tensor]:
    """Greedy NMS: ``mmcv.ops.nms``, with float64 boxes as well.

    Args:
        boxes (Tensor): (n, 4) (x1, y1, x2, y2).
        scores (Tensor): (n, ).
        iou_threshold (float): Boxes overlapping a kept box by more than
            this are suppressed.
        offset (int): 0 or 1, added to widths and heights.
        score_threshold (float): Boxes scoring at most this are dropped
            first (when > 0).
        max_num (int): Keep at most this many (all when <= 0).

    Returns:
        tuple[Tensor, Tensor]: Kept (k, 5) [x1, y1, x2, y2, score] in
        descending score order and their (k, ) indices into ``boxes``.
    """
    if boxes.dtype != torch.float64:
        return mmcv_ops.nms(boxes, scores, iou_threshold, offset,
                            score_threshold, max_num)
    assert boxes.size(1) == 4 and boxes.size(0) == scores.size(0)
    assert offset in (0, 1)
    valid = None
    if score_threshold > 0:  # as mmcv's NMSop
        valid = torch.nonzero(scores > score_threshold).squeeze(1)
        inds = _greedy_nms(boxes[valid], scores[valid], iou_threshold, offset)
    else:
        inds = _greedy_nms(boxes, scores, iou_threshold, offset)
    if max_num > 0:
        inds = inds[:max_num]
    if valid is not None:
        inds = valid[inds]
    return torch.cat((boxes[inds], scores[inds].reshape(-1, 1)), dim=1), inds


def _greedy_nms(boxes: Tensor,
                scores: Tensor,
                iou_threshold: float,
                offset: int,
                block: int = 32) -> Tensor:
    """mmcv's CPU ``nms`` kernel in float64: the same sort, the same IoU
    arithmetic and the same greedy order.

    For ``block`` boxes at a time, the overlaps of those not yet suppressed
    with all later boxes are computed at once (each element with the
    kernel's expression); then they suppress in score order, as the
    kernel's loop does.

    Returns:
        Tensor: (k, ) int64 indices of the kept boxes, descending score.
    """
    device = boxes.device
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=device)
    order = scores.sort(0, descending=True)[1]
    x1, y1, x2, y2 = (c.cpu().numpy() for c in boxes[order].unbind(1))
    areas = (x2 - x1 + offset) * (y2 - y1 + offset)
    threshold = _as_float32(iou_threshold)
    num = len(areas)
    keep = np.ones(num, dtype=bool)
    for start in range(0, num, block):
        rows = start + np.flatnonzero(keep[start:start + block])
        if not len(rows):
            continue
        cols = slice(start, None)
        w = np.maximum(
            0.0,
            np.minimum(x2[rows, None], x2[None, cols]) -
            np.maximum(x1[rows, None], x1[None, cols]) + offset)
        h = np.maximum(
            0.0,
            np.minimum(y2[rows, None], y2[None, cols]) -
            np.maximum(y1[rows, None], y1[None, cols]) + offset)
        inter = w * h
        # 0 / 0 (two empty boxes) is NaN, which suppresses nothing, as in
        # the kernel
        with np.errstate(divide='ignore', invalid='ignore'):
            suppresses = inter / (areas[rows, None] + areas[None, cols] -
                                  inter) > threshold
        for row, i in enumerate(rows):
            if keep[i]:
                keep[i + 1:] &= ~suppresses[row, i + 1 - start:]
    return order[torch.from_numpy(keep).to(device)]


@deprecated_api_warning({'iou_thr': 'iou_threshold'})
def soft_nms(boxes: Tensor,
             scores: Tensor,
             iou_threshold: float = 0.3,
             sigma: float = 0.5,
             min_score: float = 1e-3,
             method: str = 'linear',
             offset: int = 0) -> Tuple[Tensor, Tensor]:
    """Soft-NMS: ``mmcv.ops.soft_nms``, with float64 boxes as well.

    Args:
        boxes (Tensor): (n, 4) (x1, y1, x2, y2).
        scores (Tensor): (n, ).
        iou_threshold (float): Overlap from which ``'naive'`` and
            ``'linear'`` decay a score.
        sigma (float): Width of the ``'gaussian'`` decay.
        min_score (float): Boxes whose decayed score falls below this are
            dropped.
        method (str): ``'naive'``, ``'linear'`` or ``'gaussian'``.
        offset (int): 0 or 1, added to widths and heights.

    Returns:
        tuple[Tensor, Tensor]: Kept (k, 5) [x1, y1, x2, y2, decayed score]
        in the order mmcv's kernel selects them, and their (k, ) indices
        into ``boxes``.
    """
    if boxes.dtype != torch.float64:
        return mmcv_ops.soft_nms(boxes, scores, iou_threshold, sigma,
                                 min_score, method, offset)
    assert boxes.size(1) == 4 and boxes.size(0) == scores.size(0)
    assert offset in (0, 1) and method in SOFT_NMS_METHODS
    dets, inds = _soft_nms_float64(boxes.detach().cpu().numpy(),
                                   scores.detach().cpu().numpy(),
                                   _as_float32(iou_threshold),
                                   _as_float32(sigma), _as_float32(min_score),
                                   SOFT_NMS_METHODS[method], offset)
    return (torch.from_numpy(dets).to(boxes.device),
            torch.from_numpy(inds).to(boxes.device))


def _soft_nms_float64(boxes: np.ndarray, scores: np.ndarray,
                      iou_threshold: float, sigma: float, min_score: float,
                      method: int, offset: int) -> Tuple[np.ndarray, ...]:
    """mmcv's CPU ``softnms`` kernel in float64, step for step.

    Step i moves the best remaining box (the first of equal scores) to slot
    i, decays the scores of the boxes after it and drops those that fall
    below ``min_score`` by moving the last box into their slot: the slot
    order decides later ties and the output order, so it is reproduced,
    not only the set of survivors. The decay of each box is computed for
    all slots at once (it depends on box i and that box only).

    Returns:
        tuple[ndarray, ndarray]: (k, 5) float64 dets and (k, ) int64
        indices, as mmcv's ``soft_nms`` returns them.
    """
    # columns x1, y1, x2, y2, score, area; one row per slot
    slots = np.empty((len(scores), 6), dtype=np.float64)
    slots[:, :4] = boxes
    slots[:, 4] = scores
    slots[:, 5] = (boxes[:, 2] - boxes[:, 0] + offset) * (
        boxes[:, 3] - boxes[:, 1] + offset)
    inds = np.arange(len(scores), dtype=np.int64)
    num = len(scores)
    i = 0
    while i < num:
        best = i + int(np.argmax(slots[i:num, 4]))  # first of equal maxima
        slots[[i, best]] = slots[[best, i]]
        inds[[i, best]] = inds[[best, i]]
        x1, y1, x2, y2, _, area = slots[i]
        rest = slots[i + 1:num]
        w = np.maximum(
            0.0,
            np.minimum(x2, rest[:, 2]) - np.maximum(x1, rest[:, 0]) + offset)
        h = np.maximum(
            0.0,
            np.minimum(y2, rest[:, 3]) - np.maximum(y1, rest[:, 1]) + offset)
        inter = w * h
        with np.errstate(divide='ignore', invalid='ignore'):
            overlap = inter / (area + rest[:, 5] - inter)
        if method == 0:
            weight = np.where(overlap >= iou_threshold, 0.0, 1.0)
        elif method == 1:
            weight = np.where(overlap >= iou_threshold, 1 - overlap, 1.0)
        else:
            weight = np.exp(-(overlap * overlap) / sigma)
        rest[:, 4] *= weight
        dropped = rest[:, 4] < min_score
        if dropped.any():
            order = _drop_by_moving_the_last(list(range(i + 1, num)), dropped)
            slots[i + 1:i + 1 + len(order)] = slots[order]
            inds[i + 1:i + 1 + len(order)] = inds[order]
            num = i + 1 + len(order)
        i += 1
    return slots[:num, :5].copy(), inds[:num].copy()


def _drop_by_moving_the_last(slots: list, dropped: np.ndarray) -> list:
    """The kernel's removal: a dropped slot takes the current last box and
    is examined again; the list shrinks by one.

    Args:
        slots (list[int]): Slot numbers, in slot order.
        dropped (ndarray): Per entry of ``slots``, whether its box is
            dropped.

    Returns:
        list[int]: The surviving slot numbers in their new order.
    """
    is_dropped = dict(zip(slots, dropped.tolist()))
    out = list(slots)
    pos, end = 0, len(out)
    while pos < end:
        if is_dropped[out[pos]]:
            end -= 1
            out[pos] = out[end]
        else:
            pos += 1
    return out[:end]


def any_dtype_nms_cfg(cfg: Optional[dict]) -> Optional[dict]:
    """A copy of a test config whose ``nms`` type is :func:`nms` or
    :func:`soft_nms` (mmcv's ``batched_nms`` calls a callable type).

    Args:
        cfg (dict, optional): A head's test config with an ``nms`` entry of
            type ``'nms'`` or ``'soft_nms'`` (other types are kept).

    Returns:
        dict, optional: ``cfg`` (None, or without ``nms``) or its copy.
    """
    if cfg is None or cfg.get('nms') is None:
        return cfg
    functions = {'nms': nms, 'soft_nms': soft_nms}
    if cfg['nms'].get('type', 'nms') not in functions:
        return cfg
    cfg = copy.copy(cfg)
    cfg['nms'] = dict(
        cfg['nms'], type=functions[cfg['nms'].get('type', 'nms')])
    return cfg
