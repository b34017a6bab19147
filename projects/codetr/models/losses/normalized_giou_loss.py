"""The GIoU loss as the DETR codebases compute it.

DETR's ``util/box_ops.py`` (kept by Deformable DETR and DAB-DETR) computes
the GIoU of boxes normalised by the image size and *adds* 1e-6 to the union
and to the enclosing area: ``iou = inter / (union + 1e-6)``, ``giou = iou -
(area - union) / (area + 1e-6)``. mmdet's ``GIoULoss`` takes boxes in pixels
and clamps the union and the enclosing area at ``eps`` from below, which
leaves them unchanged for any real box. With normalised areas of about 0.1
the two differ by about 1e-5 relative per box; DAB-Deformable-DETR's parity
(docs/design.md, DAB-Deformable-DETR) reproduces the DETR arithmetic.
"""
from typing import Optional

import torch
from mmdet.models.losses import GIoULoss
from mmdet.models.losses.utils import weight_reduce_loss
from mmdet.registry import MODELS
from torch import Tensor


def normalized_giou(pred: Tensor, target: Tensor, eps: float) -> Tensor:
    """Aligned GIoU of DETR's ``generalized_box_iou``.

    Args:
        pred, target (Tensor): (n, 4) normalised (x1, y1, x2, y2).
        eps (float): Added to the union and the enclosing area.

    Returns:
        Tensor: (n, ) GIoU.
    """
    area1 = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    area2 = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    lt = torch.max(pred[:, :2], target[:, :2])
    rb = torch.min(pred[:, 2:], target[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = area1 + area2 - inter
    iou = inter / (union + eps)
    wh = (torch.max(pred[:, 2:], target[:, 2:]) -
          torch.min(pred[:, :2], target[:, :2])).clamp(min=0)
    area = wh[:, 0] * wh[:, 1]
    return iou - (area - union) / (area + eps)


@MODELS.register_module()
class NormalizedGIoULoss(GIoULoss):
    """``1 - GIoU`` of boxes normalised by the image size, with DETR's
    additive ``eps`` (see the module docstring).

    The query heads read ``normalized_boxes`` and pass normalised
    (x1, y1, x2, y2) boxes instead of pixel boxes in their batched losses
    (matching, encoder, Co-DINO's denoising and auxiliary-query losses);
    mmdet's per-layer path (``batched_matching=False``) passes pixel boxes,
    so the heads refuse that combination.

    Args:
        eps (float): Added to the union and the enclosing area. Defaults to
            1e-6 (DETR's).
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight (float): Weight of the loss.
    """

    #: the heads pass boxes normalised by the image size
    normalized_boxes = True

    def forward(self,
                pred: Tensor,
                target: Tensor,
                weight: Optional[Tensor] = None,
                avg_factor: Optional[float] = None,
                reduction_override: Optional[str] = None,
                **kwargs) -> Tensor:
        """The weighted loss.

        Args:
            pred, target (Tensor): (n, 4) normalised (x1, y1, x2, y2).
            weight (Tensor, optional): (n, ) or (n, 4) (averaged over the
                last axis, as mmdet's ``GIoULoss`` does).
            avg_factor (float, optional): Divisor of the mean.
            reduction_override (str, optional): Overrides ``reduction``.

        Returns:
            Tensor: The loss, (n, ) for reduction ``'none'``.
        """
        if weight is not None and not torch.any(weight > 0):
            return (pred * weight.reshape(len(pred), -1)).sum()  # 0
        reduction = reduction_override or self.reduction
        if weight is not None and weight.dim() > 1:
            weight = weight.mean(-1)
        loss = 1 - normalized_giou(pred, target, self.eps)
        return self.loss_weight * weight_reduce_loss(loss, weight, reduction,
                                                     avg_factor)
