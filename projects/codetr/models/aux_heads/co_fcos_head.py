"""FCOS as a Co-DETR auxiliary head."""
from typing import Dict, List, Tuple

import torch
from mmcv.cnn import Scale
from mmdet.models.dense_heads import AnchorFreeHead, FCOSHead
from mmdet.models.utils import unpack_gt_instances
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from mmengine.structures import InstanceData
from torch import Tensor

from ..positive_coords import PositiveCoords
from ..precision.any_dtype_heads import any_dtype_head_cfgs
from ..precision.any_dtype_nms import any_dtype_nms_cfg
from ..precision.dtypes import at_least_float32


@MODELS.register_module()
class CoFCOSHead(FCOSHead):
    """mmdet's ``FCOSHead`` that also reports its assignment.

    Losses, assignment (points inside a ground-truth box, or inside its
    centre region with ``center_sampling``, within the level's regress
    range; the smallest box wins) and inference are unchanged. The addition
    is :meth:`loss_and_pos_coords`: FCOS has points, not anchors, so every
    point at level ``l`` is reported as a square box of side ``2 ** (l + 6)``
    (64 px at stride 8 ... 1024 px at stride 128, the size of the ATSS
    anchors of the same levels) centred on the point, as proposed by the
    Co-DETR authors for FCOS (Sense-X/Co-DETR#35).

    In a float64 model the head computes in float64 (mmdet casts the box
    regression to float32, and with it the points and targets; its
    centerness loss and NMS are float32-only: ``any_dtype_heads``,
    ``any_dtype_nms``); float32 values are unchanged.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **any_dtype_head_cfgs(kwargs))
        self._targets = None

    def forward_single(self, x: Tensor, scale: Scale,
                       stride: int) -> Tuple[Tensor, Tensor, Tensor]:
        """mmdet's ``FCOSHead.forward_single``; the box regression is cast
        to at least float32 (mmdet: to float32, also from float64).

        Args:
            x (Tensor): (bs, dim, h, w) features of one level.
            scale (Scale): The level's learnt regression scale.
            stride (int): The level's stride (``norm_on_bbox`` at test time).

        Returns:
            tuple[Tensor]: Class logits (bs, num_classes, h, w), distances
            (l, t, r, b) (bs, 4, h, w) and centerness (bs, 1, h, w).
        """
        cls_score, bbox_pred, cls_feat, reg_feat = \
            AnchorFreeHead.forward_single(self, x)
        centerness = self.conv_centerness(
            reg_feat if self.centerness_on_reg else cls_feat)
        bbox_pred = at_least_float32(scale(bbox_pred))
        if self.norm_on_bbox:
            # clamp, not an in-place ReLU: the prediction is needed for the
            # gradient (as mmdet)
            bbox_pred = bbox_pred.clamp(min=0)
            if not self.training:
                bbox_pred *= stride
        else:
            bbox_pred = bbox_pred.exp()
        return cls_score, bbox_pred, centerness

    def _bbox_post_process(self, results: InstanceData, cfg, *args,
                           **kwargs) -> InstanceData:
        """mmdet's test-time NMS, float64 boxes included
        (:func:`any_dtype_nms_cfg`)."""
        return super()._bbox_post_process(results, any_dtype_nms_cfg(cfg),
                                          *args, **kwargs)

    def get_targets(self, points: List[Tensor], *args,
                    **kwargs) -> Tuple[List[Tensor], List[Tensor]]:
        """mmdet's targets, kept (with the points) for
        :meth:`loss_and_pos_coords`.

        ``FCOSHead.loss_by_feat`` computes the targets internally and returns
        only losses; keeping them here (consumed and cleared right after the
        loss) reuses that method instead of copying it.
        """
        targets = super().get_targets(points, *args, **kwargs)
        self._targets = (points, *targets)
        return targets

    def loss_and_pos_coords(
            self, x: Tuple[Tensor, ...],
            batch_data_samples: SampleList) -> Tuple[Dict, PositiveCoords]:
        """Losses and positive coordinates on the auxiliary pyramid.

        Args:
            x (tuple[Tensor]): Pyramid levels, each (bs, dim, h_l, w_l).
            batch_data_samples (list[DetDataSample]): Ground truth and metas.

        Returns:
            tuple[dict, PositiveCoords]: mmdet's FCOS losses (``loss_cls``,
            ``loss_bbox``, ``loss_centerness``), and for all
            A = sum(h_l * w_l) points (level-major then row-major): boxes of
            side ``2 ** (l + 6)`` centred on the points (bs, A, 4), labels
            (bs, A) (``num_classes`` for negatives), assigned ground-truth
            boxes (bs, A, 4) (zeros for negatives), all absolute
            (x1, y1, x2, y2), and the pyramid feature at each point
            (bs, A, dim).
        """
        outs = self(x)
        gt_instances, gt_ignore, img_metas = unpack_gt_instances(
            batch_data_samples)
        losses = self.loss_by_feat(*outs, gt_instances, img_metas, gt_ignore)
        points, labels, ltrb = self._targets
        self._targets = None
        num_imgs = x[0].size(0)

        coords, targets = [], []
        for lvl, lvl_points in enumerate(points):
            half = 2**(lvl + 6) / 2
            coords.append(
                torch.cat([lvl_points - half, lvl_points + half], dim=-1))
            # mmdet stacks the images within each level: (bs * n_l, 4).
            dist = ltrb[lvl].view(num_imgs, -1, 4)
            if self.norm_on_bbox:  # targets were divided by the stride
                dist = dist * self.strides[lvl]
            x1y1 = lvl_points - dist[..., :2]  # (px - l, py - t)
            x2y2 = lvl_points + dist[..., 2:]  # (px + r, py + b)
            targets.append(torch.cat([x1y1, x2y2], dim=-1))
        labels = torch.cat([lbl.view(num_imgs, -1) for lbl in labels], dim=1)
        targets = torch.cat(targets, dim=1)
        # Negatives carry distances to an arbitrary box: zero them.
        is_pos = (labels >= 0) & (labels < self.num_classes)
        targets = torch.where(is_pos[..., None], targets, 0.0)
        feats = torch.cat([lvl.flatten(2) for lvl in x], dim=2).transpose(1, 2)
        pos_coords = PositiveCoords(
            coords=torch.cat(coords, dim=0).expand(num_imgs, -1, -1),
            labels=labels,
            targets=targets.detach(),
            feats=feats,
            source='fcos')
        return losses, pos_coords
