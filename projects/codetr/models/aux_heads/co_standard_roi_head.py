"""Faster R-CNN's RoI head as a Co-DETR auxiliary head."""
from typing import Dict, List, Tuple

import torch
from mmdet.models.roi_heads import StandardRoIHead
from mmdet.models.utils import unpack_gt_instances
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from mmdet.structures.bbox import bbox2roi
from mmdet.utils import ConfigType, InstanceList
from mmengine.structures import InstanceData
from torch import Tensor

from ..positive_coords import PositiveCoords
from ..precision.any_dtype_nms import any_dtype_nms_cfg
from ..task_modules.batched_roi_targets import (batched_roi_targets,
                                                check_batched_roi_config)


@MODELS.register_module()
class CoStandardRoIHead(StandardRoIHead):
    """mmdet's ``StandardRoIHead`` that also reports its sampled RoIs.

    Losses and inference are unchanged; :meth:`loss_and_pos_coords` also
    returns the sampled RoIs with their labels, assigned boxes and pooled
    features (docs/design.md, positive queries). The bbox head must regress
    decoded boxes
    (``reg_decoded_bbox=True``) so that its targets are absolute boxes.

    Args:
        max_pos_coords (int): Upper bound of RoIs reported per image.
            Defaults to 2000 (above any sampler size, i.e. all of them).
        batched_images (bool): Assign, sample and build the targets of all
            images in one pass (:func:`batched_roi_targets`) instead of
            mmdet's assigner, sampler and ``get_targets`` per image: the
            same assignment, candidates, counts, order and targets, tensor
            for tensor; the random subsets come from another random stream
            (one ``torch.rand`` per step) with mmdet's distribution. One
            read from the device (the RoIs per image) instead of several per
            image. Needs mmdet's ``MaxIoUAssigner`` (or
            ``SyncFreeMaxIoUAssigner``) and ``RandomSampler`` (or
            ``DeviceRandomSampler``); others raise. Defaults to True; False
            runs mmdet's per-image code.
        **kwargs: ``StandardRoIHead`` arguments.
    """

    def __init__(self,
                 *args,
                 max_pos_coords: int = 2000,
                 batched_images: bool = True,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_pos_coords = max_pos_coords
        self.batched_images = batched_images
        if batched_images and self.train_cfg:
            check_batched_roi_config(self.bbox_assigner, self.bbox_sampler)
        if not self.bbox_head.reg_decoded_bbox:
            raise ValueError('CoStandardRoIHead needs '
                             'bbox_head.reg_decoded_bbox=True: its targets '
                             'become query targets and must be absolute '
                             'boxes, not deltas.')

    def _bbox_forward(self, x: Tuple[Tensor, ...], rois: Tensor) -> dict:
        """mmdet's RoI forward on dense feature maps.

        mmcv's RoIAlign reads its input as dense NCHW memory and ignores
        strides, so a strided view (e.g. a transposed slice of the encoder
        memory) would be pooled from the wrong elements without any error.
        The query head already hands over contiguous maps; for those
        ``contiguous()`` returns the same tensor, so this guard against other
        producers of the pyramid costs nothing.
        """
        return super()._bbox_forward(
            tuple(lvl.contiguous() for lvl in x), rois)

    def predict_bbox(self,
                     x: Tuple[Tensor, ...],
                     batch_img_metas: List[dict],
                     rpn_results_list: InstanceList,
                     rcnn_test_cfg: ConfigType,
                     rescale: bool = False) -> InstanceList:
        """mmdet's RoI detections; their NMS takes float64 boxes too
        (:func:`any_dtype_nms_cfg`). Arguments and results are mmdet's."""
        return super().predict_bbox(x, batch_img_metas, rpn_results_list,
                                    any_dtype_nms_cfg(rcnn_test_cfg),
                                    rescale)

    def loss(self, x: Tuple[Tensor, ...], rpn_results_list: InstanceList,
             batch_data_samples: SampleList) -> dict:
        """mmdet's RoI losses (positive coordinates discarded)."""
        return self.loss_and_pos_coords(x, rpn_results_list,
                                        batch_data_samples)[0]

    def loss_and_pos_coords(
            self, x: Tuple[Tensor, ...], rpn_results_list: InstanceList,
            batch_data_samples: SampleList) -> Tuple[Dict, PositiveCoords]:
        """Assign, sample, compute losses and report the sampled RoIs.

        Args:
            x (tuple[Tensor]): Pyramid levels (the extractor uses the first
                ``len(featmap_strides)``), each (bs, dim, h_l, w_l).
            rpn_results_list (list[InstanceData]): Proposals per image
                (``bboxes`` absolute (x1, y1, x2, y2)).
            batch_data_samples (list[DetDataSample]): Ground truth and metas.

        Returns:
            tuple[dict, PositiveCoords]: mmdet's losses (``loss_cls``,
            ``loss_bbox``, ``acc``) and, per image, the first
            P = min(max_pos_coords, smallest sample count) sampled RoIs in
            sampler order (positives first): proposals (bs, P, 4), labels
            (bs, P), assigned boxes (bs, P, 4) and RoI features averaged over
            the pooling grid (bs, P, dim).
        """
        gt_instances, gt_ignore, _ = unpack_gt_instances(batch_data_samples)
        if self.batched_images:
            return self._batched_loss_and_pos_coords(x, rpn_results_list,
                                                     gt_instances, gt_ignore)
        sampling_results = []
        for i, rpn_results in enumerate(rpn_results_list):
            # A new InstanceData, not mmdet's in-place rename of ``bboxes``:
            # several RoI heads share the same proposals.
            proposals = InstanceData(priors=rpn_results.bboxes)
            assign_result = self.bbox_assigner.assign(proposals,
                                                      gt_instances[i],
                                                      gt_ignore[i])
            sampling_results.append(
                self.bbox_sampler.sample(
                    assign_result,
                    proposals,
                    gt_instances[i],
                    feats=[lvl[i][None] for lvl in x]))

        rois = bbox2roi([res.priors for res in sampling_results])
        bbox_results = self._bbox_forward(x, rois)
        loss_and_target = self.bbox_head.loss_and_target(
            cls_score=bbox_results['cls_score'],
            bbox_pred=bbox_results['bbox_pred'],
            rois=rois,
            sampling_results=sampling_results,
            rcnn_train_cfg=self.train_cfg)
        labels, _, bbox_targets, _ = loss_and_target['bbox_targets']
        pos_coords = self._pos_coords(
            [len(res.priors) for res in sampling_results], rois, labels,
            bbox_targets, bbox_results['bbox_feats'])
        return loss_and_target['loss_bbox'], pos_coords

    def _batched_loss_and_pos_coords(
            self, x: Tuple[Tensor, ...], rpn_results_list: InstanceList,
            gt_instances: InstanceList,
            gt_ignore: InstanceList) -> Tuple[Dict, PositiveCoords]:
        """:meth:`loss_and_pos_coords` with the targets of all images at
        once (:func:`batched_roi_targets`); mmdet's RoI pooling and
        ``bbox_head.loss``. Arguments and results are
        :meth:`loss_and_pos_coords`'s."""
        targets = batched_roi_targets(
            self.bbox_assigner, self.bbox_sampler, self.bbox_head.num_classes,
            self.train_cfg.pos_weight,
            [res.bboxes for res in rpn_results_list], gt_instances, gt_ignore)
        bbox_results = self._bbox_forward(x, targets.rois)
        losses = self.bbox_head.loss(bbox_results['cls_score'],
                                     bbox_results['bbox_pred'], targets.rois,
                                     targets.labels, targets.label_weights,
                                     targets.bbox_targets,
                                     targets.bbox_weights)
        return losses, self._pos_coords(targets.counts, targets.rois,
                                        targets.labels, targets.bbox_targets,
                                        bbox_results['bbox_feats'])

    def _pos_coords(self, counts: List[int], rois: Tensor, labels: Tensor,
                    bbox_targets: Tensor,
                    bbox_feats: Tensor) -> PositiveCoords:
        """Stack the first P sampled RoIs of every image (docs/design.md,
        positive queries).

        Args:
            counts (list[int]): Sampled RoIs per image.
            rois (Tensor): (sum(counts), 5) (image index, x1, y1, x2, y2),
                image after image, each image's positives first.
            labels (Tensor): (sum(counts), ) long.
            bbox_targets (Tensor): (sum(counts), 4) absolute boxes.
            bbox_feats (Tensor): (sum(counts), dim, 7, 7) pooled features.
        """
        num = min(self.max_pos_coords, *counts)
        feats = bbox_feats.mean(dim=(2, 3))  # (num_rois, dim), not detached

        # With reg_decoded_bbox, targets are (num_rois, 4) absolute boxes.
        def per_image(t: Tensor) -> Tensor:
            return torch.stack([part[:num] for part in t.split(counts)])

        return PositiveCoords(
            coords=per_image(rois[:, 1:]).detach(),
            labels=per_image(labels),
            targets=per_image(bbox_targets),
            feats=per_image(feats),
            source='rcnn')
