"""One-to-one matching and losses of all decoder layers in one pass.

mmdet's ``DETRHead`` computes the Hungarian targets per decoder layer and
per image: each of the L x B matchings builds its cost matrix with ~30
small kernels, copies it to the host (a wait for the GPU), builds the
targets with ``nonzero``/``unique`` (two more waits), and every layer's
three losses are separate calls with one more wait each in the L1/GIoU
zero-weight checks. With 6 decoder layers, the encoder proposals and
batch 2, that is about 2300 kernel launches and 70 waits per step, and
the step is bound by the host.

:class:`BatchedMatchingDETRHead` computes the same targets and losses with
the layers stacked: one cost matrix per image for all layers (the match
costs are row-wise, so stacking the layers' queries changes no value), one
device-to-host copy of all costs, the Hungarian solver per layer and image
on the host as before, one host-to-device copy of the matched indices, and
each loss once, element-wise, over all layers, summed per layer and divided
by that layer's average factor, which mmdet computes on the host anyway.
The matching is unchanged (same costs, same solver); the losses agree with
mmdet's to float32 rounding (the L1 weight 5 is applied before the sum
instead of after it; weights that are powers of two give identical values).
``batched_matching=False`` keeps mmdet's per-layer path.
"""
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from mmdet.models.dense_heads import DETRHead
from mmdet.models.losses import QualityFocalLoss
from mmdet.models.task_modules import HungarianAssigner
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy, bbox_xyxy_to_cxcywh
from mmdet.utils import InstanceList, OptInstanceList, reduce_mean
from mmengine.structures import InstanceData
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torch import distributed as dist

from ..device_copies import host_to_device, image_size_factors
from ..precision.dtypes import at_least_float32
from ..task_modules.sync_free_overlaps import box_overlaps


class BatchedMatchingDETRHead(DETRHead):
    """``DETRHead`` whose losses match and reduce all layers at once.

    It sits between mmdet's ``DeformableDETRHead`` and ``DETRHead`` in the
    method resolution order of the Co-DETR query heads (list it after the
    mmdet head among the bases), so that both ``DeformableDETRHead``'s and
    ``DINOHead``'s ``super()`` calls reach it; the encoder loss
    (``loss_by_feat_single``) takes the same path with one layer.

    Args:
        batched_matching (bool): Use the batched path; False keeps mmdet's
            per-layer, per-image one (for comparison). The batched path
            also needs a ``HungarianAssigner``; with another assigner mmdet's
            path is used. Defaults to True.
        avg_factor_eps (float): Added to each average factor before the
            division, as mmdet's ``weight_reduce_loss`` does (its float32
            ``eps``, the default, which the released Co-DETR shares);
            DETR-style code divides by the factor itself (0,
            DAB-Deformable-DETR).
        *args, **kwargs: ``DETRHead`` arguments.
    """

    def __init__(self,
                 *args,
                 batched_matching: bool = True,
                 avg_factor_eps: float = float(torch.finfo(torch.float32).eps),
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batched_matching = batched_matching
        self.avg_factor_eps = avg_factor_eps
        if self.normalized_iou_boxes and not batched_matching:
            raise ValueError(
                f'{type(self.loss_iou).__name__} takes normalised boxes, '
                'which only the batched loss path passes: use '
                'batched_matching=True, or mmdet\'s GIoULoss')

    @property
    def normalized_iou_boxes(self) -> bool:
        """Whether ``loss_iou`` takes boxes normalised by the image size
        (``NormalizedGIoULoss``) rather than pixel boxes."""
        return getattr(self.loss_iou, 'normalized_boxes', False)

    @property
    def _batched(self) -> bool:
        return self.batched_matching and type(
            self.assigner) is HungarianAssigner

    def loss_by_feat(
        self,
        all_layers_cls_scores: Tensor,
        all_layers_bbox_preds: Tensor,
        batch_gt_instances: InstanceList,
        batch_img_metas: List[dict],
        batch_gt_instances_ignore: OptInstanceList = None
    ) -> Dict[str, Tensor]:
        """``DETRHead.loss_by_feat`` with all layers matched at once.

        Args:
            all_layers_cls_scores (Tensor): (num_layers, bs, num_queries,
                cls_out_channels) logits.
            all_layers_bbox_preds (Tensor): (num_layers, bs, num_queries, 4)
                normalised (cx, cy, w, h).
            batch_gt_instances (list[InstanceData]): ``bboxes`` (n, 4)
                absolute (x1, y1, x2, y2) and ``labels`` (n, ) per image.
            batch_img_metas (list[dict]): ``img_shape`` per image.
            batch_gt_instances_ignore: Must be None, as in mmdet.

        Returns:
            dict[str, Tensor]: ``loss_{cls,bbox,iou}`` of the last layer and
            ``d{i}.loss_{cls,bbox,iou}`` of the others.
        """
        if not self._batched:
            return super().loss_by_feat(all_layers_cls_scores,
                                        all_layers_bbox_preds,
                                        batch_gt_instances, batch_img_metas,
                                        batch_gt_instances_ignore)
        assert batch_gt_instances_ignore is None, \
            f'{self.__class__.__name__} only supports ' \
            'for batch_gt_instances_ignore setting to None.'
        losses = self.loss_all_layers(all_layers_cls_scores,
                                      all_layers_bbox_preds,
                                      batch_gt_instances, batch_img_metas)
        loss_dict = dict()
        num_layers = all_layers_cls_scores.size(0)
        for layer in range(num_layers):
            prefix = '' if layer == num_layers - 1 else f'd{layer}.'
            for name, values in zip(('cls', 'bbox', 'iou'), losses):
                loss_dict[f'{prefix}loss_{name}'] = values[layer]
        return loss_dict

    def loss_by_feat_single(self, cls_scores: Tensor, bbox_preds: Tensor,
                            batch_gt_instances: InstanceList,
                            batch_img_metas: List[dict]) -> Tuple[Tensor]:
        """One layer (the encoder proposals): the batched path, L = 1."""
        if not self._batched:
            return super().loss_by_feat_single(cls_scores, bbox_preds,
                                               batch_gt_instances,
                                               batch_img_metas)
        losses = self.loss_all_layers(cls_scores[None], bbox_preds[None],
                                      batch_gt_instances, batch_img_metas)
        return tuple(values[0] for values in losses)

    def loss_all_layers(self, cls_scores: Tensor, bbox_preds: Tensor,
                        batch_gt_instances: InstanceList,
                        batch_img_metas: List[dict]) -> Tuple[Tensor, ...]:
        """Classification, L1 and IoU loss of every layer.

        Args:
            cls_scores (Tensor): (L, bs, num_queries, cls_out_channels).
            bbox_preds (Tensor): (L, bs, num_queries, 4) normalised
                (cx, cy, w, h).
            batch_gt_instances (list[InstanceData]): Ground truth per image.
            batch_img_metas (list[dict]): ``img_shape`` per image.

        Returns:
            tuple[tuple[Tensor]]: ``loss_cls``, ``loss_bbox``, ``loss_iou``,
            each L 0-d tensors, as ``DETRHead.loss_by_feat_single`` returns
            them per layer.
        """
        num_layers, bs, num_queries, channels = cls_scores.shape
        # one host-to-device copy of the image sizes, for matching and loss
        factors = image_size_factors(batch_img_metas,
                                     at_least_float32(bbox_preds))
        (labels, label_weights, bbox_targets, bbox_weights,
         num_pos) = self.hungarian_targets(cls_scores, bbox_preds,
                                           batch_gt_instances,
                                           batch_img_metas, factors)
        num_neg = bs * num_queries - num_pos
        return self.losses_of_targets(
            cls_scores,
            bbox_preds,
            (labels, label_weights, bbox_targets, bbox_weights),
            cls_avg=num_pos * 1.0 + num_neg * self.bg_cls_weight,
            reg_avg=num_pos.astype(np.float64),
            factors=factors)

    def losses_of_targets(self, cls_scores: Tensor, bbox_preds: Tensor,
                          targets: Tuple[Tensor, Tensor, Tensor, Tensor],
                          cls_avg: np.ndarray, reg_avg: np.ndarray,
                          factors: Tensor) -> Tuple[Tensor, ...]:
        """Classification, L1 and IoU loss of every layer, given targets
        (the matched ones, or Co-DINO's fixed denoising targets).

        Args:
            cls_scores (Tensor): (L, bs, num_queries, cls_out_channels).
            bbox_preds (Tensor): (L, bs, num_queries, 4) normalised
                (cx, cy, w, h).
            targets (tuple[Tensor]): ``labels`` (L * bs * num_queries, )
                with ``num_classes`` for background, ``label_weights``
                (same), ``bbox_targets`` (L * bs * num_queries, 4)
                normalised (cx, cy, w, h) and ``bbox_weights`` (same), in
                the predictions' layer, image, query order.
            cls_avg (np.ndarray): (L, ) classification average factor of
                each layer, before the mean over processes.
            reg_avg (np.ndarray): (L, ) positives of each layer (the box
                losses' average factor), before the mean over processes.
            factors (Tensor): (bs, 4) ``[w, h, w, h]`` of each image.

        Returns:
            tuple[tuple[Tensor]]: ``loss_cls``, ``loss_bbox``, ``loss_iou``,
            each L 0-d tensors.
        """
        num_layers, bs, num_queries, channels = cls_scores.shape
        labels, label_weights, bbox_targets, bbox_weights = targets
        if dist.is_available() and dist.is_initialized():
            # one all-reduce for all layers instead of two per layer
            counts = reduce_mean(
                cls_scores.new_tensor(np.concatenate([cls_avg, reg_avg])))
            counts = counts.tolist()
            if self.sync_cls_avg_factor:
                cls_avg = np.asarray(counts[:num_layers])
            reg_avg = np.asarray(counts[num_layers:])
        cls_avg = np.maximum(cls_avg, 1)
        reg_avg = np.maximum(reg_avg, 1)

        flat_scores = cls_scores.reshape(-1, channels)
        flat_preds = bbox_preds.reshape(-1, 4)
        loss_cls = self.loss_cls(
            flat_scores,
            self.cls_loss_targets(labels, flat_preds, bbox_targets),
            label_weights,
            reduction_override='none')
        factors = factors.to(flat_preds.dtype)[None, :, None].expand(
            num_layers, bs, num_queries, 4).reshape(-1, 4)
        if self.normalized_iou_boxes:
            factors = factors.new_ones(())
        loss_iou = self.loss_iou(
            bbox_cxcywh_to_xyxy(flat_preds) * factors,
            bbox_cxcywh_to_xyxy(bbox_targets) * factors,
            bbox_weights,
            reduction_override='none')
        loss_bbox = self.loss_bbox(
            flat_preds, bbox_targets, bbox_weights, reduction_override='none')
        return (self._per_layer(loss_cls, cls_avg, num_layers),
                self._per_layer(loss_bbox, reg_avg, num_layers),
                self._per_layer(loss_iou, reg_avg, num_layers))

    def cls_loss_targets(self, labels: Tensor, bbox_preds: Tensor,
                         bbox_targets: Tensor):
        """Classification targets of ``loss_cls`` for one-to-one or fixed
        (auxiliary-query) assignments.

        Args:
            labels (Tensor): (n, ) class targets, ``num_classes`` for
                background.
            bbox_preds (Tensor): (n, 4) predicted normalised (cx, cy, w, h).
            bbox_targets (Tensor): (n, 4) normalised (cx, cy, w, h) targets.

        Returns:
            Tensor | tuple[Tensor, Tensor]: ``labels`` for a focal loss; for
            QualityFocalLoss ``(labels, scores)`` with the IoU of each
            positive prediction (detached) with its target as soft score and
            0 for background, as mmdet's DETR heads compute it (element-wise
            here, so no ``nonzero``).
        """
        if not isinstance(self.loss_cls, QualityFocalLoss):
            return labels
        is_pos = (labels >= 0) & (labels < self.num_classes)
        # mmdet's bbox_overlaps without its copy of eps from the host
        ious = box_overlaps(
            bbox_cxcywh_to_xyxy(bbox_preds.detach()),
            bbox_cxcywh_to_xyxy(bbox_targets),
            is_aligned=True)
        return labels, torch.where(is_pos, ious, ious.new_zeros(()))

    def _per_layer(self, loss: Tensor, avg_factors: np.ndarray,
                   num_layers: int) -> Tuple[Tensor, ...]:
        """Sum an element-wise loss per layer and divide by its factor.

        mmdet's ``weight_reduce_loss`` computes ``loss.sum() / (avg_factor +
        eps)`` (``avg_factor_eps`` here); each layer's elements are one
        contiguous block of ``loss``, summed alone (in another order than
        mmdet's ``sum()`` of the block may take).
        mmdet's L1/GIoU losses return a scalar 0 when no weight is positive
        (then no layer has a positive).
        """
        if loss.dim() == 0:
            return (loss, ) * num_layers
        sums = loss.reshape(num_layers, -1).sum(dim=1)
        # the divisors rounded to the loss dtype, as a Python float divisor
        divisors = host_to_device(
            [float(factor) + self.avg_factor_eps for factor in avg_factors],
            sums)
        # unbind, not indexing: its backward is one stack of the L gradients
        # where each index would scatter into a zero tensor of its own
        return (sums / divisors).unbind(0)

    @torch.no_grad()
    def hungarian_targets(self,
                          cls_scores: Tensor,
                          bbox_preds: Tensor,
                          batch_gt_instances: InstanceList,
                          batch_img_metas: List[dict],
                          factors: Optional[Tensor] = None) -> tuple:
        """Hungarian targets of all layers and images, flattened.

        Non-finite predictions (a diverging fp16 step, before the loss
        scaler skips it) would make ``linear_sum_assignment`` raise; they
        are matched as zeros, and the losses still see the original values.

        Args: as :meth:`loss_all_layers`, and ``factors``: (bs, 4)
            ``[w, h, w, h]`` of each image, fp32 or float64 (from
            ``batch_img_metas`` when None).

        Returns:
            tuple: ``labels`` (L * bs * num_queries, ) with ``num_classes``
            for background, ``label_weights`` (same, ones),
            ``bbox_targets`` (L * bs * num_queries, 4) normalised
            (cx, cy, w, h), ``bbox_weights`` (same, 1 at positives) and
            ``num_pos`` (L, ) host integers: positives per layer.
        """
        num_layers, bs, num_queries, channels = cls_scores.shape
        scores = torch.nan_to_num(at_least_float32(cls_scores), 0.0, 0.0, 0.0)
        preds = torch.nan_to_num(at_least_float32(bbox_preds), 0.5, 1.0, 0.0)
        if factors is None:
            factors = image_size_factors(batch_img_metas, preds)
        costs = []
        for img, (gt, meta) in enumerate(zip(batch_gt_instances,
                                             batch_img_metas)):
            if len(gt) == 0:
                continue
            # the match costs are row-wise: all layers' queries as rows
            pred = InstanceData(
                scores=scores[:, img].reshape(-1, channels),
                bboxes=bbox_cxcywh_to_xyxy(preds[:, img].reshape(-1, 4)) *
                factors[img:img + 1])
            cost = torch.stack([
                match_cost(pred_instances=pred, gt_instances=gt,
                           img_meta=meta)
                for match_cost in self.assigner.match_costs
            ]).sum(dim=0)
            costs.append(cost.reshape(-1))
        # the one device-to-host copy of the step's matching
        host_costs = torch.cat(costs).cpu().numpy() if costs else None

        rows, gt_rows = [], []
        num_pos = np.zeros(num_layers, dtype=np.int64)
        offset = gt_offset = 0
        for img, gt in enumerate(batch_gt_instances):
            num_gts = len(gt)
            if num_gts == 0:
                continue
            size = num_layers * num_queries * num_gts
            cost = host_costs[offset:offset + size].reshape(
                num_layers, num_queries, num_gts)
            offset += size
            for layer in range(num_layers):
                row, col = linear_sum_assignment(cost[layer])
                rows.append((layer * bs + img) * num_queries + row)
                gt_rows.append(gt_offset + col)
                num_pos[layer] += len(row)
            gt_offset += num_gts

        gt_bboxes = torch.cat([gt.bboxes for gt in batch_gt_instances])
        gt_labels = torch.cat([gt.labels for gt in batch_gt_instances])
        gt_factors = torch.cat([
            factors[img:img + 1].expand(len(gt), 4)
            for img, gt in enumerate(batch_gt_instances)
        ])
        num_preds = num_layers * bs * num_queries
        labels = gt_labels.new_full((num_preds, ), self.num_classes)
        label_weights = gt_bboxes.new_ones(num_preds)
        bbox_targets = gt_bboxes.new_zeros(num_preds, 4)
        bbox_weights = gt_bboxes.new_zeros(num_preds, 4)
        if rows:
            # the one host-to-device copy of the matched indices
            index = host_to_device(
                np.stack([np.concatenate(rows),
                          np.concatenate(gt_rows)]),
                gt_labels,
                dtype=torch.long)
            pos, pos_gt = index[0], index[1]
            labels[pos] = gt_labels[pos_gt]
            bbox_weights[pos] = 1.0
            bbox_targets[pos] = bbox_xyxy_to_cxcywh(gt_bboxes[pos_gt] /
                                                    gt_factors[pos_gt])
        return labels, label_weights, bbox_targets, bbox_weights, num_pos
