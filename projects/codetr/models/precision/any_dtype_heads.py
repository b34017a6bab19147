"""What the anchor heads take from mmdet in float32 only, in any dtype.

A float64 model (``model.double()``; the parity tests run one) meets three
float32 computations in mmdet's anchor heads, none of which raises: the
values are silently rounded to float32.

- ``binary_cross_entropy`` (``CrossEntropyLoss(use_sigmoid=True)``, the RPN
  classification and ATSS centerness losses) casts its target to float32,
  and PyTorch then returns a float32 loss for float64 logits;
- ``bbox2delta`` (``DeltaXYWHBBoxCoder.encode``, the RPN regression
  targets) casts boxes and ground truth to float32;
- ``AnchorHead.get_anchors`` asks the prior generator for float32 anchors.

:class:`AnyDtypeCrossEntropyLoss` and :class:`AnyDtypeDeltaXYWHBBoxCoder`
compute in float64 what they receive in float64 and give mmdet's values for
every other dtype (the same float32 values, bit for bit: the loss calls
mmdet's function, the coder runs ``bbox2delta``'s expressions with its
constants kept on the device);
:func:`any_dtype_head_cfgs` makes a head build them instead of mmdet's, and
:class:`AnyDtypeAnchorsMixin` asks for anchors in the head's dtype.
"""
from typing import Dict, List, Tuple, Union

import torch
import torch.nn.functional as F
from mmdet.models.losses import CrossEntropyLoss
from mmdet.models.losses.cross_entropy_loss import (_expand_onehot_labels,
                                                    binary_cross_entropy)
from mmdet.models.losses.utils import weight_reduce_loss
from mmdet.registry import MODELS, TASK_UTILS
from mmdet.structures.bbox import get_box_tensor
from torch import Tensor

from ..task_modules.sync_free_coder import SyncFreeDeltaXYWHBBoxCoder
from .dtypes import weights_dtype


def any_dtype_binary_cross_entropy(pred: Tensor,
                                   label: Tensor,
                                   weight: Tensor = None,
                                   reduction: str = 'mean',
                                   avg_factor: float = None,
                                   class_weight: Tensor = None,
                                   ignore_index: int = -100,
                                   avg_non_ignore: bool = False) -> Tensor:
    """mmdet's ``binary_cross_entropy``; float64 logits keep float64
    targets, weights and loss (mmdet casts them to float32).

    Args:
        pred (Tensor): (n, ) or (n, c) logits.
        label (Tensor): (n, ) targets (class indices when ``pred`` is
            (n, c), else probabilities).
        weight (Tensor, optional): Element-wise weights.
        reduction, avg_factor, class_weight, ignore_index, avg_non_ignore:
            As mmdet's.

    Returns:
        Tensor: The loss, reduced as ``reduction`` says.
    """
    if pred.dtype != torch.float64:
        return binary_cross_entropy(pred, label, weight, reduction, avg_factor,
                                    class_weight, ignore_index, avg_non_ignore)
    ignore_index = -100 if ignore_index is None else ignore_index
    if pred.dim() != label.dim():
        label, weight, valid_mask = _expand_onehot_labels(
            label, weight, pred.size(-1), ignore_index)
    else:
        valid_mask = ((label >= 0) & (label != ignore_index)).to(pred.dtype)
        weight = valid_mask if weight is None else weight * valid_mask
    if avg_factor is None and avg_non_ignore and reduction == 'mean':
        avg_factor = valid_mask.sum().item()
    loss = F.binary_cross_entropy_with_logits(
        pred, label.to(pred.dtype), pos_weight=class_weight, reduction='none')
    return weight_reduce_loss(
        loss,
        weight.to(pred.dtype),
        reduction=reduction,
        avg_factor=avg_factor)


@MODELS.register_module()
class AnyDtypeCrossEntropyLoss(CrossEntropyLoss):
    """mmdet's ``CrossEntropyLoss``; with ``use_sigmoid`` a float64
    prediction gets a float64 loss (:func:`any_dtype_binary_cross_entropy`).
    Arguments are mmdet's."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.use_sigmoid:
            self.cls_criterion = any_dtype_binary_cross_entropy


@TASK_UTILS.register_module()
class AnyDtypeDeltaXYWHBBoxCoder(SyncFreeDeltaXYWHBBoxCoder):
    """mmdet's ``DeltaXYWHBBoxCoder`` whose ``encode`` keeps float64 boxes in
    float64 (mmdet's ``bbox2delta`` computes in float32) and, like the
    decode of :class:`SyncFreeDeltaXYWHBBoxCoder`, copies ``means`` and
    ``stds`` from the host once per device and dtype instead of on every
    call (``bbox2delta``'s ``new_tensor``: on a GPU a copy that makes the
    host wait for the queued work). mmdet's values otherwise, bit for bit.
    Arguments are mmdet's."""

    def encode(self, bboxes: Tensor, gt_bboxes: Tensor) -> Tensor:
        """Deltas (dx, dy, dw, dh) from ``bboxes`` to ``gt_bboxes``.

        Args:
            bboxes (Tensor): (n, 4) source boxes (x1, y1, x2, y2).
            gt_bboxes (Tensor): (n, 4) target boxes.

        Returns:
            Tensor: (n, 4) deltas, normalised by ``means`` and ``stds``.
        """
        bboxes = get_box_tensor(bboxes)
        gt_bboxes = get_box_tensor(gt_bboxes)
        if torch.onnx.is_in_onnx_export():
            return super().encode(bboxes, gt_bboxes)
        assert bboxes.size() == gt_bboxes.size() and bboxes.size(-1) == 4
        # bbox2delta computes in float32 (``.float()``); float64 stays
        dtype = torch.float64 if torch.float64 in (
            bboxes.dtype, gt_bboxes.dtype) else torch.float32
        proposals = bboxes.to(dtype)
        gt = gt_bboxes.to(dtype)
        # bbox2delta's expressions, in its order
        px = (proposals[..., 0] + proposals[..., 2]) * 0.5
        py = (proposals[..., 1] + proposals[..., 3]) * 0.5
        pw = proposals[..., 2] - proposals[..., 0]
        ph = proposals[..., 3] - proposals[..., 1]
        gx = (gt[..., 0] + gt[..., 2]) * 0.5
        gy = (gt[..., 1] + gt[..., 3]) * 0.5
        gw = gt[..., 2] - gt[..., 0]
        gh = gt[..., 3] - gt[..., 1]
        deltas = torch.stack([(gx - px) / pw, (gy - py) / ph,
                              torch.log(gw / pw),
                              torch.log(gh / ph)],
                             dim=-1)
        means, stds = self._means_stds(deltas)
        return deltas.sub_(means).div_(stds)


_ANY_DTYPE_TYPES = {
    'CrossEntropyLoss': AnyDtypeCrossEntropyLoss,
    'DeltaXYWHBBoxCoder': AnyDtypeDeltaXYWHBBoxCoder,
}


def any_dtype_head_cfgs(kwargs: Dict) -> Dict:
    """A head's keyword arguments with mmdet's ``CrossEntropyLoss`` and
    ``DeltaXYWHBBoxCoder`` configs (any key, e.g. ``loss_cls``,
    ``loss_centerness``, ``bbox_coder``) turned into their any-dtype
    subclasses; other entries unchanged.

    Args:
        kwargs (dict): The head's keyword arguments.

    Returns:
        dict: A shallow copy with the configs replaced.
    """
    out = dict(kwargs)
    for key, cfg in kwargs.items():
        if not isinstance(cfg, dict):
            continue
        kind = cfg.get('type')
        if isinstance(kind, str) and kind.split('.')[-1] in _ANY_DTYPE_TYPES:
            out[key] = dict(cfg, type=_ANY_DTYPE_TYPES[kind.split('.')[-1]])
    return out


class AnyDtypeAnchorsMixin:
    """Training anchors of an mmdet ``AnchorHead`` in the dtype of the
    head's weights (at least float32); list it before the mmdet head. The
    prior generator must take a ``dtype`` (mmdet's and
    ``CachedAnchorGenerator`` do)."""

    def get_anchors(
        self,
        featmap_sizes: List[Tuple[int, int]],
        batch_img_metas: List[dict],
        device: Union[torch.device, str] = 'cuda'
    ) -> Tuple[List[List[Tensor]], List[List[Tensor]]]:
        """``AnchorHead.get_anchors`` (the same anchors for every image,
        valid flags per image), the anchors in :func:`weights_dtype`.

        Args:
            featmap_sizes (list[tuple]): (h, w) of every level.
            batch_img_metas (list[dict]): ``pad_shape`` per image.
            device (torch.device | str): Device of the outputs.

        Returns:
            tuple[list[list[Tensor]], list[list[Tensor]]]: Per image and
            level, anchors (h * w * A, 4) and valid flags (h * w * A, ).
        """
        anchors = self.prior_generator.grid_priors(
            featmap_sizes, dtype=weights_dtype(self), device=device)
        flags = [
            self.prior_generator.valid_flags(featmap_sizes, meta['pad_shape'],
                                             device)
            for meta in batch_img_metas
        ]
        return [anchors for _ in batch_img_metas], flags
