"""The RPN of Co-DETR's Faster R-CNN branch."""
from typing import List, Optional

import torch
from mmdet.models.dense_heads import RPNHead
from mmdet.registry import MODELS
from mmdet.utils import InstanceList, OptInstanceList
from mmengine.structures import InstanceData
from torch import Tensor

from ..precision.any_dtype_heads import (AnyDtypeAnchorsMixin,
                                         any_dtype_head_cfgs)
from ..precision.any_dtype_nms import any_dtype_nms_cfg
from ..task_modules.batched_anchor_targets import (batched_get_targets,
                                                   supports_batched_targets)
from ..task_modules.batched_proposals import (batched_rpn_proposals,
                                              supports_batched_proposals)
from ..task_modules.level_batching import levels_side_by_side


@MODELS.register_module()
class CoRPNHead(AnyDtypeAnchorsMixin, RPNHead):
    """mmdet's ``RPNHead`` with its losses computed over all levels at once.

    Assignment, sampling, proposals and the loss values are mmdet's. In a
    float64 model they are computed in float64 (``any_dtype_heads``:
    anchors, regression targets and the classification loss; NMS through
    ``any_dtype_nms``); float32 values are unchanged.

    Args:
        batched_levels (bool): Run mmdet's single-level loss once on the
            levels laid side by side (:func:`levels_side_by_side`) instead
            of once per level: both losses are sums over the sampled
            anchors divided by one ``avg_factor``, so only the order of the
            sum changes, for a fifth of the kernel launches.
            The loss entries are then tensors, not per-level lists.
            Defaults to True; False runs ``RPNHead.loss_by_feat``, whose
            sums in mmdet's order match the released code's golden losses
            bit for bit (the batched order differs in the last bits).
        batched_images (bool): Compute the training targets and the
            proposals of all images at once
            (:mod:`..task_modules.batched_anchor_targets`,
            :mod:`..task_modules.batched_proposals`) instead of once per
            image, without host reads in the targets and with one
            (instead of one per image) before NMS. The assignment and the
            proposals are mmdet's, tensor for tensor; the sampled anchors
            come from another random stream with mmdet's distribution, so
            ``loss_rpn_cls`` (and ``loss_rpn_bbox`` when an image has more
            than 128 positives) differ by seed only; ``avg_factor`` is a
            0-d tensor instead of an int. What they do not reproduce
            (ignored boxes, another sampler, rescaled proposals, ...) runs
            mmdet's per-image code. Defaults to True; False runs mmdet's
            per-image code.
        *args, **kwargs: ``RPNHead``'s arguments.
    """

    def __init__(self,
                 *args,
                 batched_levels: bool = True,
                 batched_images: bool = True,
                 **kwargs) -> None:
        super().__init__(*args, **any_dtype_head_cfgs(kwargs))
        self.batched_levels = batched_levels
        self.batched_images = batched_images

    def get_targets(self,
                    anchor_list: List[List[Tensor]],
                    valid_flag_list: List[List[Tensor]],
                    batch_gt_instances: InstanceList,
                    batch_img_metas: List[dict],
                    batch_gt_instances_ignore: OptInstanceList = None,
                    unmap_outputs: bool = True,
                    return_sampling_results: bool = False) -> tuple:
        """``AnchorHead.get_targets``, for all images at once when
        ``batched_images`` and :func:`supports_batched_targets` allow;
        arguments and outputs are mmdet's (``avg_factor`` a 0-d tensor in
        the batched case)."""
        if self.batched_images and supports_batched_targets(
                self, anchor_list, batch_gt_instances_ignore, unmap_outputs,
                return_sampling_results):
            return batched_get_targets(self, anchor_list, valid_flag_list,
                                       batch_gt_instances, batch_img_metas)
        return super().get_targets(anchor_list, valid_flag_list,
                                   batch_gt_instances, batch_img_metas,
                                   batch_gt_instances_ignore, unmap_outputs,
                                   return_sampling_results)

    def predict_by_feat(self,
                        cls_scores: List[Tensor],
                        bbox_preds: List[Tensor],
                        score_factors: Optional[List[Tensor]] = None,
                        batch_img_metas: Optional[List[dict]] = None,
                        cfg=None,
                        rescale: bool = False,
                        with_nms: bool = True) -> InstanceList:
        """``BaseDenseHead.predict_by_feat``, for all images at once up to
        NMS when ``batched_images`` and :func:`supports_batched_proposals`
        allow (the same proposals); arguments and outputs are mmdet's."""
        if self.batched_images and supports_batched_proposals(
                self, score_factors, rescale, with_nms):
            return batched_rpn_proposals(
                self, cls_scores, bbox_preds, batch_img_metas,
                self.test_cfg if cfg is None else cfg)
        return super().predict_by_feat(cls_scores, bbox_preds, score_factors,
                                       batch_img_metas, cfg, rescale,
                                       with_nms)

    def _bbox_post_process(self, results: InstanceData, cfg, *args,
                           **kwargs) -> InstanceData:
        """mmdet's proposal NMS, float64 boxes included
        (:func:`any_dtype_nms_cfg`)."""
        return super()._bbox_post_process(results, any_dtype_nms_cfg(cfg),
                                          *args, **kwargs)

    def loss_by_feat(self,
                     cls_scores: List[Tensor],
                     bbox_preds: List[Tensor],
                     batch_gt_instances: InstanceList,
                     batch_img_metas: List[dict],
                     batch_gt_instances_ignore: OptInstanceList = None
                     ) -> dict:
        """RPN losses; see ``RPNHead.loss_by_feat`` for the arguments.

        Returns:
            dict[str, Tensor]: ``loss_rpn_cls``, ``loss_rpn_bbox``.
        """
        if not self.batched_levels:
            return super().loss_by_feat(cls_scores, bbox_preds,
                                        batch_gt_instances, batch_img_metas,
                                        batch_gt_instances_ignore)
        anchors, valid_flags = self.get_anchors(
            [featmap.size()[-2:] for featmap in cls_scores],
            batch_img_metas,
            device=cls_scores[0].device)
        labels, label_weights, bbox_targets, bbox_weights, avg_factor = \
            self.get_targets(anchors, valid_flags, batch_gt_instances,
                             batch_img_metas, batch_gt_instances_ignore)
        loss_cls, loss_bbox = self.loss_by_feat_single(
            levels_side_by_side(cls_scores),
            levels_side_by_side(bbox_preds),
            torch.stack([torch.cat(levels) for levels in anchors]),
            torch.cat(labels, 1),
            torch.cat(label_weights, 1),
            torch.cat(bbox_targets, 1),
            torch.cat(bbox_weights, 1),
            avg_factor=avg_factor)
        return dict(loss_rpn_cls=loss_cls, loss_rpn_bbox=loss_bbox)
