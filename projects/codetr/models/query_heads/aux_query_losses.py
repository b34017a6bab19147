"""The losses of the customised positive queries (docs/design.md,
positive queries): fixed one-to-many targets, every decoder layer and
query set at once."""
from typing import Dict, List, Sequence

import torch
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy
from mmdet.utils import reduce_mean
from torch import Tensor

from ..device_copies import image_size_factors
from ..positive_coords import AuxQueryTargets
from ..precision.dtypes import at_least_float32


class AuxQueryLossMixin:
    """:meth:`loss_aux_by_feat` of :class:`CoQueryHeadMixin`.

    The host class provides ``loss_cls``/``loss_bbox``/``loss_iou``,
    ``cls_loss_targets``, ``normalized_iou_boxes``, ``avg_factor_eps``
    (``BatchedMatchingDETRHead``), ``sync_cls_avg_factor`` and ``lambda_1``.
    """

    def loss_aux_by_feat(self, all_cls_scores: Tensor, all_bbox_preds: Tensor,
                         targets: Sequence[AuxQueryTargets],
                         batch_img_metas: List[dict]) -> Dict[str, Tensor]:
        """Losses of every decoder layer and query set, fixed targets.

        Each configured loss is evaluated once, element-wise, over all
        layers and sets; the per-(layer, set) sums are then divided by the
        set's average factor, which is what one ``loss(..., avg_factor)``
        call per layer and set returns.

        Args:
            all_cls_scores (Tensor): (num_layers, bs, sum N_k, num_classes)
                logits, the sets concatenated along the query axis.
            all_bbox_preds (Tensor): (num_layers, bs, sum N_k, 4) normalised
                (cx, cy, w, h).
            targets (Sequence[AuxQueryTargets]): Targets of each set.
            batch_img_metas (list[dict]): For ``img_shape``.

        Returns:
            dict[str, Tensor]: 3 losses per decoder layer and set.
        """
        num_layers, bs, num_queries, num_classes = all_cls_scores.shape
        sizes = [t.labels.size(1) for t in targets]

        def cat(name: str) -> Tensor:  # (bs, sum N_k, ...) over the sets
            return torch.cat([getattr(t, name) for t in targets], dim=1)

        def per_layer(t: Tensor) -> Tensor:  # repeat targets for each layer
            return t.unsqueeze(0).expand(num_layers,
                                         *t.shape).reshape(-1, *t.shape[2:])

        labels, label_weights = cat('labels'), cat('label_weights')
        bbox_targets, bbox_weights = cat('bbox_targets'), cat('bbox_weights')
        factors = image_size_factors(batch_img_metas, all_bbox_preds)
        if self.normalized_iou_boxes:  # NormalizedGIoULoss
            factors = torch.ones_like(factors)
        factors = factors[:, None].expand(-1, num_queries, -1)
        # fp32 under autocast; element-wise losses, summed per layer and set
        cls_scores = at_least_float32(all_cls_scores).reshape(-1, num_classes)
        bbox_preds = at_least_float32(all_bbox_preds).reshape(-1, 4)
        flat_targets = per_layer(bbox_targets).reshape(-1, 4)
        loss_cls = self.loss_cls(
            cls_scores,
            self.cls_loss_targets(
                per_layer(labels).reshape(-1), bbox_preds, flat_targets),
            per_layer(label_weights).reshape(-1),
            reduction_override='none')
        loss_bbox = self.loss_bbox(
            bbox_preds,
            flat_targets,
            per_layer(bbox_weights).reshape(-1, 4),
            reduction_override='none')
        loss_iou = self.loss_iou(
            bbox_cxcywh_to_xyxy(bbox_preds) *
            per_layer(factors).reshape(-1, 4),
            bbox_cxcywh_to_xyxy(
                per_layer(bbox_targets * factors).reshape(-1, 4)),
            per_layer(bbox_weights).reshape(-1, 4),
            reduction_override='none')
        # mmdet's L1/GIoU return a scalar 0 when no weight is positive
        loss_bbox, loss_iou = (
            loss.expand(bbox_preds.size(0)) if loss.dim() == 0 else loss
            for loss in (loss_bbox, loss_iou))

        eps = self.avg_factor_eps  # as mmdet's weight_reduce_loss
        losses = dict()
        for name, loss in (('cls', loss_cls), ('bbox', loss_bbox), ('iou',
                                                                    loss_iou)):
            loss = loss.reshape(num_layers, bs, num_queries,
                                -1).sum(dim=(1, 3))  # (num_layers, sum N_k)
            for k, (part, target) in enumerate(
                    zip(loss.split(sizes, dim=1), targets)):
                # positives reduced over GPUs, at least 1, kept on device
                num_pos = target.bbox_weights[..., 0].sum()
                if self.sync_cls_avg_factor:
                    num_pos = reduce_mean(num_pos)
                values = part.sum(1) / (num_pos.clamp(min=1) + eps)
                values = values * self.lambda_1
                # unbind: one backward node for all layers (see
                # BatchedMatchingDETRHead._per_layer)
                for layer, value in enumerate(values.unbind(0)):
                    prefix = '' if layer == num_layers - 1 else f'd{layer}.'
                    losses[f'{prefix}loss_{name}_aux{k}'] = value
        return losses
