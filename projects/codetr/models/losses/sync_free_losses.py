"""mmdet's focal, quality focal, binary cross-entropy and L1 losses without
host reads.

On a GPU a read of a device value by the host (``.item()``, ``nonzero``, a
Python ``bool`` of a tensor) makes the host wait for all queued work; a
training step is bound by the host, so each wait leaves the GPU idle later
(docs/performance.md, host synchronisations). Four of mmdet's losses read
where the value needs no read:

- ``FocalLoss`` given labels takes mmcv's CUDA kernel on a GPU, whose
  launcher checks ``target.max() <= num_classes`` on the host.
  :class:`SyncFreeFocalLoss` takes mmdet's PyTorch formula
  (``py_sigmoid_focal_loss`` on one-hot targets, its CPU path) on every
  device.
- ``CrossEntropyLoss(use_sigmoid=True)`` given labels expands them to
  one-hot targets through a ``nonzero`` (``_expand_onehot_labels``).
  :class:`SyncFreeCrossEntropyLoss` builds the same targets and weights with
  ``F.one_hot`` (and, as ``AnyDtypeCrossEntropyLoss``, which the anchor
  heads build for mmdet's, keeps float64 in float64).
- ``QualityFocalLoss`` finds the positives with a ``nonzero`` and writes
  their loss into the negatives' with an indexed assignment.
  :class:`SyncFreeQualityFocalLoss` evaluates the positives' formula on
  every element of a dense target, where it equals the negatives' (the
  target is 0 there: ``|0 - p| ** beta`` is ``p ** beta`` exactly).
- ``L1Loss`` returns ``(pred * weight).sum()`` when no weight is positive,
  decided on the host (``torch.any``). :class:`SyncFreeL1Loss` always takes
  the weighted path, which gives the same zero value and zero gradient
  there, but element-wise zeros instead of a 0-d zero for ``reduction
  'none'`` (the query heads accept both).

``F.one_hot`` with a given number of classes reads nothing back on a GPU;
labels beyond it raise a device assert there (on a CPU, its message): the
focal loss's labels above ``num_classes`` (the cross-entropy maps them to
no column, as mmdet). Each class is mmdet's otherwise: same arguments, and
on a CPU the same operations, bit for bit, except the quality focal loss,
whose positives are computed inside the dense tensor instead of on a
gathered copy (the same formula; vectorised and scalar code may round the
last bit differently). On a GPU the cross-entropy and
L1 losses are mmdet's bit for bit; the focal loss evaluates mmcv's formula
with PyTorch's kernels, which agree with mmcv's float32 kernel to rounding
for logits within about +-9. Beyond, mmcv's kernel loses precision: it
computes ``1 - sigmoid(x)``, which rounds to 0 from about +16.6 (its log is
then bounded at ``log(FLT_MIN)``), where ``binary_cross_entropy_with_logits``
stays exact. For fp16 logits (ATSS under AMP) mmcv's kernel computes in
half precision, where that bound rounds to 0 and the loss becomes NaN for
logits of moderate size; the PyTorch formula runs its logarithms in fp32
under autocast and stays finite (at a larger saved-tensor footprint).
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from mmdet.models.losses import FocalLoss, L1Loss, QualityFocalLoss
from mmdet.models.losses.smooth_l1_loss import l1_loss
from mmdet.models.losses.utils import weighted_loss
from mmdet.registry import MODELS
from torch import Tensor

from ..precision.any_dtype_heads import AnyDtypeCrossEntropyLoss


def one_hot_targets(labels: Tensor, num_classes: int,
                    ignore_index: Optional[int] = None
                    ) -> Tuple[Tensor, Tensor]:
    """mmdet's one-hot expansion of labels, computed on their device.

    Args:
        labels (Tensor): (n, ) long labels; those in [0, num_classes) are
            classes, others (the background ``num_classes``) set no column.
        num_classes (int): Columns of the targets.
        ignore_index (int, optional): A label whose rows are invalid;
            negative labels are invalid too.

    Returns:
        tuple[Tensor, Tensor]: (n, num_classes) long one-hot targets, and
        the (n, ) float mask of valid rows.
    """
    valid = labels >= 0
    if ignore_index is not None:
        valid &= labels != ignore_index
    in_range = valid & (labels < num_classes)
    targets = F.one_hot(
        torch.where(in_range, labels, num_classes),
        num_classes=num_classes + 1)[:, :num_classes]
    return targets, valid.float()


@MODELS.register_module()
class SyncFreeFocalLoss(FocalLoss):
    """mmdet's ``FocalLoss`` (sigmoid), given labels always computed by
    mmdet's PyTorch formula on one-hot targets. Arguments are mmdet's."""

    def forward(self,
                pred: Tensor,
                target: Tensor,
                weight: Optional[Tensor] = None,
                avg_factor: Optional[Union[float, Tensor]] = None,
                reduction_override: Optional[str] = None) -> Tensor:
        """The loss, as ``FocalLoss.forward``.

        Args:
            pred (Tensor): (n, num_classes) logits (probabilities when
                ``activated``).
            target (Tensor): (n, ) long labels in [0, num_classes], where
                ``num_classes`` is the background, or (n, num_classes)
                one-hot or soft targets.
            weight (Tensor, optional): (n, ) or (n, num_classes) weights.
            avg_factor (float | Tensor, optional): Divides the sum.
            reduction_override (str, optional): 'none', 'mean' or 'sum'.

        Returns:
            Tensor: The weighted loss, reduced as asked.
        """
        if not self.activated and target.dim() != pred.dim():
            # mmdet's CPU path, whose labels are never negative
            num_classes = pred.size(1)
            target = F.one_hot(target, num_classes=num_classes + 1)
            target = target[:, :num_classes]
        return super().forward(pred, target, weight, avg_factor,
                               reduction_override)


@weighted_loss
def dense_quality_focal_loss(pred: Tensor,
                             target: Tensor,
                             beta: float = 2.0,
                             activated: bool = False) -> Tensor:
    """mmdet's quality focal loss on a dense target, without its
    ``nonzero``: ``bce(pred, target) * |target - p| ** beta`` everywhere,
    which is mmdet's negative term where the target is 0.

    Args:
        pred (Tensor): (n, C) logits, or probabilities when ``activated``.
        target (Tensor): (n, C) quality targets: the IoU at the label's
            column, 0 elsewhere.
        beta (float): Exponent of the modulating factor.
        activated (bool): ``pred`` holds probabilities.

    Returns:
        Tensor: (n, ) loss summed over the classes.
    """
    prob = pred if activated else pred.sigmoid()
    bce = F.binary_cross_entropy if activated else \
        F.binary_cross_entropy_with_logits
    loss = bce(pred, target, reduction='none') * (target -
                                                  prob).abs().pow(beta)
    return loss.sum(dim=1)


@MODELS.register_module()
class SyncFreeQualityFocalLoss(QualityFocalLoss):
    """mmdet's ``QualityFocalLoss`` (sigmoid) computed on a dense target
    without host reads (module docstring). Arguments are mmdet's."""

    def forward(self,
                pred: Tensor,
                target: Union[Tuple[Tensor, Tensor], Tensor],
                weight: Optional[Tensor] = None,
                avg_factor: Optional[Union[float, Tensor]] = None,
                reduction_override: Optional[str] = None) -> Tensor:
        """The loss, as ``QualityFocalLoss.forward``.

        Args:
            pred (Tensor): (n, C) logits (probabilities when
                ``activated``).
            target (tuple[Tensor, Tensor] | Tensor): (n, ) long labels in
                [0, C], C for the background (labels outside [0, C) count
                as background, as in mmdet), and (n, ) quality scores (the
                IoU); or (n, C) dense soft targets.
            weight (Tensor, optional): (n, ) weights.
            avg_factor (float | Tensor, optional): Divides the sum.
            reduction_override (str, optional): 'none', 'mean' or 'sum'.

        Returns:
            Tensor: The weighted loss, reduced as asked.
        """
        assert reduction_override in (None, 'none', 'mean', 'sum')
        reduction = reduction_override or self.reduction
        if isinstance(target, Tensor):
            target = target.type_as(pred)
            # mmdet's negatives take a constant 0: no gradient to a target
            # that requires one
            target = torch.where(target != 0, target, target.new_zeros(()))
        else:
            labels, scores = target
            # labels outside [0, C) match no column: the background
            columns = torch.arange(pred.size(1), device=labels.device)
            # where, not a product: a non-finite score stays in its
            # column; the scores' dtype, as in mmdet's positive term
            target = torch.where(labels[:, None] == columns,
                                 scores[:, None], scores.new_zeros(()))
        return self.loss_weight * dense_quality_focal_loss(
            pred,
            target,
            weight,
            beta=self.beta,
            activated=self.activated,
            reduction=reduction,
            avg_factor=avg_factor)


@MODELS.register_module()
class SyncFreeCrossEntropyLoss(AnyDtypeCrossEntropyLoss):
    """mmdet's ``CrossEntropyLoss`` (in any dtype, as
    ``AnyDtypeCrossEntropyLoss``) whose sigmoid form expands labels to
    one-hot targets without a ``nonzero``. Arguments are mmdet's; the
    softmax and mask forms, and ``avg_non_ignore`` (which reads the count
    of valid labels), are mmdet's code."""

    def forward(self,
                cls_score: Tensor,
                label: Tensor,
                weight: Optional[Tensor] = None,
                avg_factor: Optional[Union[float, Tensor]] = None,
                reduction_override: Optional[str] = None,
                ignore_index: Optional[int] = None,
                **kwargs) -> Tensor:
        """The loss, as ``CrossEntropyLoss.forward``.

        Args:
            cls_score (Tensor): (n, C) logits (or (n, ) with (n, ) labels).
            label (Tensor): (n, ) long labels, C for the background.
            weight (Tensor, optional): (n, ) weights.
            avg_factor (float | Tensor, optional): Divides the sum.
            reduction_override (str, optional): 'none', 'mean' or 'sum'.
            ignore_index (int, optional): Overrides the loss's.

        Returns:
            Tensor: The weighted loss, reduced as asked.
        """
        index = self.ignore_index if ignore_index is None else ignore_index
        index = -100 if index is None else index  # mmdet's default
        # with 0 or 1 ignored, mmdet's same-shape path would mask one-hot
        # targets, so those keep mmdet's expansion
        if (self.use_sigmoid and not self.use_mask and not self.avg_non_ignore
                and label.dim() != cls_score.dim() and index not in (0, 1)):
            num_classes = cls_score.size(-1)
            label, valid = one_hot_targets(label, num_classes, index)
            valid = valid[:, None].expand(-1, num_classes)
            # mmdet repeats the weights per column and masks them in place
            weight = valid if weight is None else (
                weight.reshape(-1, 1).repeat(1, num_classes) * valid)
        return super().forward(cls_score, label, weight, avg_factor,
                               reduction_override, ignore_index, **kwargs)


@MODELS.register_module()
class SyncFreeL1Loss(L1Loss):
    """mmdet's ``L1Loss`` without its host-side test for positive weights.
    Arguments are mmdet's."""

    def forward(self,
                pred: Tensor,
                target: Tensor,
                weight: Optional[Tensor] = None,
                avg_factor: Optional[Union[float, Tensor]] = None,
                reduction_override: Optional[str] = None) -> Tensor:
        """The loss, as ``L1Loss.forward`` when a weight is positive.

        Args:
            pred, target (Tensor): (n, 4) boxes, or any equal shapes.
            weight (Tensor, optional): ``pred``'s shape.
            avg_factor (float | Tensor, optional): Divides the sum.
            reduction_override (str, optional): 'none', 'mean' or 'sum'.

        Returns:
            Tensor: The weighted loss, reduced as asked: 0 (or zeros) when
            no weight is positive, as mmdet's.
        """
        if weight is not None and pred.numel() == 0:
            return (pred * weight).sum()  # mmdet's zero of no boxes
        assert reduction_override in (None, 'none', 'mean', 'sum')
        reduction = reduction_override or self.reduction
        return self.loss_weight * l1_loss(
            pred, target, weight, reduction=reduction, avg_factor=avg_factor)
