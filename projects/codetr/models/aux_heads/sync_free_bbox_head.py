"""The RoI head's box head whose losses read nothing from the device.

mmdet's ``BBoxHead.loss`` reads the device six times per call: the number
of sampled RoIs with a positive label weight (``.item()``, the
classification loss's average factor), whether any RoI is positive
(``pos_inds.any()``), and four boolean selections of the positives
(``nonzero``). On a GPU each read waits for the queued work, in a training
step that is bound by the host (docs/performance.md, host
synchronisations).

:class:`SyncFreeShared2FCBBoxHead` computes the same losses with the
average factor kept on the device and the box loss evaluated on every RoI:
a negative RoI's prediction is replaced by its target (zeros, as mmdet's
``get_targets`` builds them) and its weight is zero, so it adds an exact
zero to the sum and no gradient. The classification loss and accuracy are
mmdet's values; the box loss sums the same terms with zeros between them,
which may round the last bit of the sum differently. Reduction ``'none'``
(one loss per positive in mmdet), given or configured, takes mmdet's code.
"""
from typing import Optional

import torch
from mmdet.models.losses import accuracy
from mmdet.models.roi_heads.bbox_heads import Shared2FCBBoxHead
from mmdet.registry import MODELS
from mmdet.structures.bbox import get_box_tensor
from torch import Tensor

from ..precision.dtypes import compute_dtype


@MODELS.register_module()
class SyncFreeShared2FCBBoxHead(Shared2FCBBoxHead):
    """mmdet's ``Shared2FCBBoxHead`` whose :meth:`loss` makes no host read
    (module docstring). Arguments, parameters and inference are mmdet's."""

    def loss(self,
             cls_score: Optional[Tensor],
             bbox_pred: Optional[Tensor],
             rois: Tensor,
             labels: Tensor,
             label_weights: Tensor,
             bbox_targets: Tensor,
             bbox_weights: Tensor,
             reduction_override: Optional[str] = None) -> dict:
        """mmdet's ``BBoxHead.loss`` without host reads.

        Args:
            cls_score (Tensor, optional): (n, num_classes + 1) logits.
            bbox_pred (Tensor, optional): (n, 4) or (n, 4 * num_classes)
                deltas (class-agnostic or per class).
            rois (Tensor): (n, 5) (image index, x1, y1, x2, y2).
            labels (Tensor): (n, ) long, ``num_classes`` for the background.
            label_weights (Tensor): (n, ).
            bbox_targets (Tensor): (n, 4) deltas, or absolute (x1, y1, x2,
                y2) with ``reg_decoded_bbox``; zeros for negatives.
            bbox_weights (Tensor): (n, 4), zeros for negatives.
            reduction_override (str, optional): 'mean' or 'sum'; 'none'
                runs mmdet's code.

        Returns:
            dict: ``loss_cls`` and ``acc`` (with ``cls_score``),
            ``loss_bbox`` (with ``bbox_pred``), as mmdet's.
        """
        # per-positive losses ('none') and custom classification losses:
        # mmdet's code
        if 'none' in (reduction_override,
                      getattr(self.loss_bbox, 'reduction', None)) or \
                self.custom_activation:
            return super().loss(cls_score, bbox_pred, rois, labels,
                                label_weights, bbox_targets, bbox_weights,
                                reduction_override)
        losses = dict()
        if cls_score is not None:
            # mmdet's max(#(label_weights > 0), 1), kept on the device in
            # the loss's dtype (float64 stays float64)
            avg_factor = (label_weights > 0).sum().to(
                compute_dtype(cls_score.dtype)).clamp(min=1)
            if cls_score.numel() > 0:
                loss_cls = self.loss_cls(
                    cls_score,
                    labels,
                    label_weights,
                    avg_factor=avg_factor,
                    reduction_override=reduction_override)
                if isinstance(loss_cls, dict):
                    losses.update(loss_cls)
                else:
                    losses['loss_cls'] = loss_cls
                losses['acc'] = accuracy(cls_score, labels)
        if bbox_pred is not None:
            positive = ((labels >= 0) & (labels < self.num_classes))[:, None]
            if self.reg_decoded_bbox:
                bbox_pred = get_box_tensor(
                    self.bbox_coder.decode(rois[:, 1:], bbox_pred))
            if not self.reg_class_agnostic:
                # the labelled class's box (sizes, not -1: no RoI is
                # possible); the background's rows are replaced below
                num_rois, box_dim = bbox_pred.size(0), bbox_targets.size(1)
                rows = torch.arange(num_rois, device=labels.device)
                columns = labels.clamp(0, self.num_classes - 1)
                bbox_pred = bbox_pred.view(num_rois, self.num_classes,
                                           box_dim)[rows, columns]
            # in the prediction's dtype, which mmdet's loss receives
            losses['loss_bbox'] = self.loss_bbox(
                torch.where(positive, bbox_pred,
                            bbox_targets.to(bbox_pred.dtype)),
                bbox_targets,
                torch.where(positive, bbox_weights, 0),
                avg_factor=bbox_targets.size(0),
                reduction_override=reduction_override)
        return losses
