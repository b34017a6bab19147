"""mmdet's box match costs of the Hungarian assigner without host copies.

On a GPU a tensor made from host data (``new_tensor``) is a copy from
pageable memory, which PyTorch follows with a synchronisation of the
stream: the host waits for all queued work. Two of mmdet's match costs make
one per call: ``BBoxL1Cost`` its normalising factor ``[w, h, w, h]``, and
``IoUCost`` the ``eps`` of ``bbox_overlaps``. The batched matching calls
each once per image and matching, so the host waited for the decoder's
work before it had issued the cost kernels, where the cost matrices' own
copy to the host (the one wait matching needs) would have waited for both.

:class:`SyncFreeBBoxL1Cost` copies the factor from pinned memory without
blocking (:func:`~..device_copies.host_to_device`) and
:class:`SyncFreeIoUCost` takes :func:`.sync_free_overlaps.box_overlaps`:
the same operations on the same values, so the same costs bit for bit.
Arguments are mmdet's.
"""
from typing import Optional

import torch
from mmdet.models.task_modules.assigners import BBoxL1Cost, IoUCost
from mmdet.registry import TASK_UTILS
from mmdet.structures.bbox import bbox_xyxy_to_cxcywh
from mmengine.structures import InstanceData
from torch import Tensor

from ..device_copies import host_to_device
from .sync_free_overlaps import box_overlaps


@TASK_UTILS.register_module()
class SyncFreeBBoxL1Cost(BBoxL1Cost):
    """mmdet's ``BBoxL1Cost`` whose factor is not copied from pageable
    memory (module docstring)."""

    def __call__(self,
                 pred_instances: InstanceData,
                 gt_instances: InstanceData,
                 img_meta: Optional[dict] = None,
                 **kwargs) -> Tensor:
        """The L1 distance of the normalised boxes, times the weight.

        Args:
            pred_instances (InstanceData): ``bboxes`` (num_preds, 4),
                (x1, y1, x2, y2) in pixels.
            gt_instances (InstanceData): ``bboxes`` (num_gts, 4), likewise.
            img_meta (dict): ``img_shape`` (h, w) normalises the boxes.

        Returns:
            Tensor: (num_preds, num_gts) costs.
        """
        pred_bboxes = pred_instances.bboxes
        gt_bboxes = gt_instances.bboxes
        if self.box_format == 'xywh':
            gt_bboxes = bbox_xyxy_to_cxcywh(gt_bboxes)
            pred_bboxes = bbox_xyxy_to_cxcywh(pred_bboxes)
        img_h, img_w = img_meta['img_shape'][:2]
        factor = host_to_device([img_w, img_h, img_w, img_h],
                                gt_bboxes).unsqueeze(0)
        gt_bboxes = gt_bboxes / factor
        pred_bboxes = pred_bboxes / factor
        bbox_cost = torch.cdist(pred_bboxes, gt_bboxes, p=1)
        return bbox_cost * self.weight


@TASK_UTILS.register_module()
class SyncFreeIoUCost(IoUCost):
    """mmdet's ``IoUCost`` on overlaps without a host copy (module
    docstring)."""

    def __call__(self,
                 pred_instances: InstanceData,
                 gt_instances: InstanceData,
                 img_meta: Optional[dict] = None,
                 **kwargs) -> Tensor:
        """The negative IoU (or GIoU) of every pair, times the weight.

        Args:
            pred_instances (InstanceData): ``bboxes`` (num_preds, 4),
                (x1, y1, x2, y2) in pixels.
            gt_instances (InstanceData): ``bboxes`` (num_gts, 4), likewise.
            img_meta (dict, optional): Unused.

        Returns:
            Tensor: (num_preds, num_gts) costs.
        """
        pred_bboxes = pred_instances.bboxes
        gt_bboxes = gt_instances.bboxes
        # mmdet's guard against fp16 overflow
        fp16 = pred_bboxes.dtype == torch.float16
        if fp16:
            pred_bboxes = pred_bboxes.to(torch.float32)
        overlaps = box_overlaps(
            pred_bboxes, gt_bboxes, mode=self.iou_mode, is_aligned=False)
        if fp16:
            overlaps = overlaps.to(torch.float16)
        iou_cost = -overlaps
        return iou_cost * self.weight
