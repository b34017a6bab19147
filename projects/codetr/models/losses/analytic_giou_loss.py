"""mmdet's GIoU loss with its gradient written out: one autograd node.

mmdet's ``GIoULoss`` computes the aligned GIoU with ``bbox_overlaps``
(about 20 tensor operations) and lets autograd differentiate it: each
``max``, ``min``, ``clamp`` and coordinate ``select`` becomes a backward
node of its own, about 90 operations in all, and the loss first reads the
device (``torch.any(weight > 0)``) and copies ``eps`` to it. On a GPU,
where the Co-DETR training step is bound by the host issuing kernels
(docs/performance.md), a K=2 step calls it five times.

:class:`AnalyticGIoULoss` computes the same values, operation for
operation, inside one ``torch.autograd.Function`` whose backward applies
the chain rule in closed form, with autograd's own conventions at the
kinks: ``maximum``/``minimum`` pass half the gradient to each side on a
tie, ``clamp`` passes it at the bound. Gradients agree with mmdet's to
rounding (another association of the same products). Like mmdet's, it
computes an fp16 ``pred`` in fp32 and returns the GIoU in fp16.

It reads nothing from the device. mmdet's loss returns ``(pred *
weight).sum()`` when no weight is positive; this one computes the loss,
which gives the same zero for finite boxes, except that reduction
``'none'`` then returns per-box zeros instead of a 0-d zero, and that a
non-finite box with a zero weight makes the gradient NaN instead of zero
(so does it in mmdet's whenever some other weight is positive).
"""
from typing import Optional, Tuple, Union

import torch
from mmdet.models.losses import GIoULoss
from mmdet.models.losses.utils import weight_reduce_loss
from mmdet.registry import MODELS
from mmdet.structures.bbox.bbox_overlaps import fp16_clamp
from torch import Tensor
from torch.autograd.function import once_differentiable


def _upper(a: Tensor, b: Union[Tensor, float]) -> Tensor:
    """d max(a, b) / da as autograd has it: 1, 1/2 on a tie, 0 (and
    d min(a, b) / da = 1 - that)."""
    return torch.sign(a - b).mul_(0.5).add_(0.5)


class AlignedGIoU(torch.autograd.Function):
    """GIoU of aligned boxes, ``bbox_overlaps(pred, target, 'giou',
    is_aligned=True, eps=eps)`` value for value, differentiable in
    ``pred``."""

    @staticmethod
    def forward(ctx, pred: Tensor, target: Tensor, eps: float) -> Tensor:
        """
        Args:
            pred (Tensor): (..., n, 4) absolute or normalised
                (x1, y1, x2, y2).
            target (Tensor): Same shape as ``pred``, no gradient.
            eps (float): Lower bound of the union and the enclosing area.

        Returns:
            Tensor: (..., n) GIoU.
        """
        # mmdet's arithmetic, in its order (the values are bit for bit)
        wh1 = pred[..., 2:] - pred[..., :2]
        wh2 = target[..., 2:] - target[..., :2]
        area1 = wh1[..., 0] * wh1[..., 1]
        area2 = wh2[..., 0] * wh2[..., 1]
        upper = torch.max(pred, target)
        lower = torch.min(pred, target)
        # min(p2, t2) - max(p1, t1) and max(p2, t2) - min(p1, t1)
        inner = lower[..., 2:] - upper[..., :2]
        outer = upper[..., 2:] - lower[..., :2]
        wh = fp16_clamp(inner, min=0)
        overlap = wh[..., 0] * wh[..., 1]
        union = area1 + area2 - overlap
        # the value of mmdet's torch.max(union, union.new_tensor([eps]))
        # without the copy of eps to the device
        union_c = union.clamp(min=eps)
        ious = overlap / union_c
        enclose_wh = fp16_clamp(outer, min=0)
        enclose = enclose_wh[..., 0] * enclose_wh[..., 1]
        enclose_c = enclose.clamp(min=eps)
        ctx.eps = eps
        ctx.save_for_backward(pred, target, wh1, inner, wh, ious, union,
                              union_c, outer, enclose_wh, enclose, enclose_c)
        return ious - (enclose_c - union_c) / enclose_c

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> Tuple[Optional[Tensor], None, None]:
        """d loss / d pred, (..., n, 4), from d loss / d GIoU, (..., n)."""
        (pred, target, wh1, inner, wh, ious, union, union_c, outer,
         enclose_wh, enclose, enclose_c) = ctx.saved_tensors
        eps = ctx.eps
        # giou = overlap / union_c - (enclose_c - union_c) / enclose_c
        grad_union_c = grad * (1 / enclose_c - ious / union_c)
        grad_enclose_c = -(grad * union_c / enclose_c) / enclose_c
        # through max(., eps): a tie passes half
        grad_union = grad_union_c * _upper(union, eps)
        grad_enclose = grad_enclose_c * _upper(enclose, eps)
        # union = area1 + area2 - overlap
        grad_overlap = grad / union_c - grad_union
        # products of the two sides, and clamp(min=0) passing at 0
        grad_inner = grad_overlap[..., None] * wh.flip(-1) * (inner >= 0)
        grad_outer = grad_enclose[..., None] * enclose_wh.flip(-1) * (
            outer >= 0)
        grad_wh1 = grad_union[..., None] * wh1.flip(-1)
        # inner = min(p2, t2) - max(p1, t1), outer = max(p2, t2) - min(p1,
        # t1): with u = d max(p, t) / dp, d min(p, t) / dp = 1 - u, so
        # d/dp1 = -(g_outer + g_wh1) - (g_inner - g_outer) u1 and
        # d/dp2 = g_inner + g_wh1 - (g_inner - g_outer) u2
        upper = _upper(pred, target).unflatten(-1, (2, 2))
        shared = torch.cat([-(grad_outer + grad_wh1), grad_inner + grad_wh1],
                           dim=-1)
        mixed = (grad_inner - grad_outer).unsqueeze(-2) * upper
        return shared - mixed.flatten(-2), None, None


@MODELS.register_module()
class AnalyticGIoULoss(GIoULoss):
    """``GIoULoss`` with the gradient in closed form (module docstring).

    The same arguments, values and reductions as mmdet's ``GIoULoss``; a
    ``target`` that needs a gradient falls back to mmdet's computation.

    Args:
        eps (float): Lower bound of the union and the enclosing area.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight (float): Weight of the loss.
    """

    def forward(self,
                pred: Tensor,
                target: Tensor,
                weight: Optional[Tensor] = None,
                avg_factor: Optional[float] = None,
                reduction_override: Optional[str] = None,
                **kwargs) -> Tensor:
        """The weighted loss: the arguments and result of mmdet's
        ``GIoULoss.forward`` (``pred``, ``target``: (n, 4)
        (x1, y1, x2, y2); ``weight``: (n, ) or (n, 4), averaged over the
        last axis; the loss, (n, ) for reduction ``'none'``)."""
        if target.requires_grad:
            return super().forward(pred, target, weight, avg_factor,
                                   reduction_override, **kwargs)
        assert reduction_override in (None, 'none', 'mean', 'sum')
        reduction = reduction_override or self.reduction
        if weight is not None and weight.dim() > 1:
            assert weight.shape == pred.shape
            weight = weight.mean(-1)
        if weight is not None and pred.numel() == 0:
            return pred.sum() * weight.sum()  # mmdet's zero of no boxes
        # mmdet's giou_loss: fp16 boxes in fp32 (areas overflow fp16)
        fp16 = pred.dtype == torch.float16
        gious = AlignedGIoU.apply(pred.float() if fp16 else pred, target,
                                  self.eps)
        loss = 1 - (gious.half() if fp16 else gious)
        return self.loss_weight * weight_reduce_loss(loss, weight, reduction,
                                                     avg_factor)
