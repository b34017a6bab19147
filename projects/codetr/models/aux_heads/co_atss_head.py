"""ATSS as a Co-DETR auxiliary head."""
from typing import Dict, List, Sequence, Tuple, Union

import torch
from mmcv.cnn import Scale
from mmdet.models.dense_heads import ATSSHead
from mmdet.models.task_modules import PseudoSampler
from mmdet.models.utils import unpack_gt_instances
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from mmdet.utils import InstanceList, OptInstanceList, reduce_mean
from mmengine.structures import InstanceData
from torch import Tensor

from ..positive_coords import PositiveCoords
from ..precision.any_dtype_heads import (AnyDtypeAnchorsMixin,
                                         any_dtype_head_cfgs)
from ..precision.any_dtype_nms import any_dtype_nms_cfg
from ..precision.dtypes import at_least_float32, compute_dtype
from ..task_modules.batched_anchor_targets import (batched_inside_flags,
                                                   pad_gt_instances)
from ..task_modules.batched_atss_assigner import BatchedATSSAssigner
from ..task_modules.level_batching import levels_side_by_side


def centerness_of(anchors: Tensor, gts: Tensor) -> Tensor:
    """ATSS's centerness target (``ATSSHead.centerness_target``, the same
    operations) without its host-side NaN check.

    Args:
        anchors (Tensor): (n, 4) absolute (x1, y1, x2, y2).
        gts (Tensor): (n, 4) absolute (x1, y1, x2, y2), each containing its
            anchor's centre (else the value is NaN or 0).

    Returns:
        Tensor: (n, ) sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))
        of the anchor centre's distances to the box sides.
    """
    anchors_cx = (anchors[:, 2] + anchors[:, 0]) / 2
    anchors_cy = (anchors[:, 3] + anchors[:, 1]) / 2
    left_right = torch.stack([anchors_cx - gts[:, 0], gts[:, 2] - anchors_cx],
                             dim=1)
    top_bottom = torch.stack([anchors_cy - gts[:, 1], gts[:, 3] - anchors_cy],
                             dim=1)
    return torch.sqrt(
        (left_right.min(dim=-1)[0] / left_right.max(dim=-1)[0]) *
        (top_bottom.min(dim=-1)[0] / top_bottom.max(dim=-1)[0]))


@MODELS.register_module()
class CoATSSHead(AnyDtypeAnchorsMixin, ATSSHead):
    """mmdet's ``ATSSHead`` that also reports its assignment (docs/design.md,
    positive queries).

    Assignment, inference and the loss values are mmdet's. The addition is
    :meth:`loss_and_pos_coords`, which returns the losses together with every
    anchor's assigned label and ground-truth box, so the query head can turn
    the positives into customised positive queries. In a float64 model they
    are computed in float64 (``any_dtype_heads``: anchors, centerness loss;
    box regression not cast to float32; NMS through ``any_dtype_nms``);
    float32 values are unchanged.

    The box targets must be absolute boxes, hence ``reg_decoded_bbox=True``
    (as in the released config).

    Args:
        batched_levels (bool): Compute each loss once over all pyramid
            levels instead of once per level (mmdet): the same sums in
            another order, with a fifth of the kernel launches and one
            ``nonzero`` synchronisation instead of five. The
            loss entries are then tensors, not per-level lists. Defaults to
            True; False runs ``ATSSHead.loss_by_feat``, whose sums in
            mmdet's order match the released code's golden losses bit for
            bit (the batched order differs in the last bits).
        masked_loss (bool): With ``batched_levels``, compute the box and
            centerness losses over every anchor with the non-positives'
            terms weighted 0 (:meth:`masked_loss_single`) instead of over
            the positives that mmdet gathers: the same sums with zeros
            added, and no host read. With the zoo's ``AnalyticGIoULoss``
            (mmdet's ``GIoULoss`` reads and copies) the head's whole
            training computation is then queued without waiting for the
            GPU (the detector issues it before the RPN's first read).
            Defaults to True; False runs ``ATSSHead.loss_by_feat_single``.
        batched_images (bool): Compute the training targets of all images
            in one pass (:meth:`get_targets`, :class:`BatchedATSSAssigner`)
            instead of mmdet's pipeline per image (valid-anchor subsets,
            assigner, sampler, ``unmap``, each with host reads): the same
            targets tensor for tensor, except where mmdet's own choice is
            an implementation detail (``batched_atss_assigner``), and
            ``avg_factor`` stays a tensor, read by nobody. Needs mmdet's
            ``ATSSAssigner`` (no ``alpha``) and ``PseudoSampler``; images
            with ignored boxes that the assigner would use take mmdet's
            path. Unlike mmdet, an image without any valid anchor does not
            raise (checking costs a read): it has no positives. Defaults
            to True; False runs ``ATSSHead.get_targets``.
        *args, **kwargs: ``ATSSHead``'s arguments.
    """

    def __init__(self,
                 *args,
                 batched_levels: bool = True,
                 batched_images: bool = True,
                 masked_loss: bool = True,
                 **kwargs) -> None:
        super().__init__(*args, **any_dtype_head_cfgs(kwargs))
        self.batched_levels = batched_levels
        self.masked_loss = masked_loss
        self.batched_images = batched_images
        if not self.reg_decoded_bbox:
            raise ValueError('CoATSSHead needs reg_decoded_bbox=True: its '
                             'assigned targets become query targets and '
                             'must be absolute boxes, not deltas.')
        self.batched_assigner = None
        if batched_images and self.train_cfg:
            if not isinstance(self.sampler, PseudoSampler):
                raise ValueError('CoATSSHead(batched_images=True) computes '
                                 "PseudoSampler's targets; got "
                                 f'{type(self.sampler).__name__}. Set '
                                 'batched_images=False for other samplers.')
            self.batched_assigner = BatchedATSSAssigner.from_assigner(
                self.assigner)
        self._targets = None

    def forward_single(self, x: Tensor, scale: Scale) -> Sequence[Tensor]:
        """mmdet's ``ATSSHead.forward_single``; the box regression is cast
        to at least float32 (mmdet: to float32, also from float64).

        Args:
            x (Tensor): (bs, dim, h, w) features of one level.
            scale (Scale): The level's learnt regression scale.

        Returns:
            tuple[Tensor]: Class logits (bs, A * num_classes, h, w), box
            deltas (bs, A * 4, h, w) and centerness (bs, A, h, w).
        """
        cls_feat = reg_feat = x
        for cls_conv in self.cls_convs:
            cls_feat = cls_conv(cls_feat)
        for reg_conv in self.reg_convs:
            reg_feat = reg_conv(reg_feat)
        cls_score = self.atss_cls(cls_feat)
        bbox_pred = at_least_float32(scale(self.atss_reg(reg_feat)))
        centerness = self.atss_centerness(reg_feat)
        return cls_score, bbox_pred, centerness

    def _bbox_post_process(self, results: InstanceData, cfg, *args,
                           **kwargs) -> InstanceData:
        """mmdet's test-time NMS, float64 boxes included
        (:func:`any_dtype_nms_cfg`)."""
        return super()._bbox_post_process(results, any_dtype_nms_cfg(cfg),
                                          *args, **kwargs)

    def get_num_level_anchors_inside(self, num_level_anchors: List[int],
                                     inside_flags: Tensor) -> List[int]:
        """mmdet's count of valid anchors per level, read in one transfer.

        mmdet reads each level's count on its own (``int(flags.sum())``):
        one wait for the GPU per level and image; the counts are the same.

        Args:
            num_level_anchors (list[int]): Anchors per level.
            inside_flags (Tensor): (sum(num_level_anchors), ) bool.

        Returns:
            list[int]: Valid anchors per level.
        """
        levels = inside_flags.split(num_level_anchors)
        return torch.stack([flags.sum() for flags in levels]).tolist()

    def get_targets(self,
                    anchor_list: List[List[Tensor]],
                    valid_flag_list: List[List[Tensor]],
                    batch_gt_instances: InstanceList,
                    batch_img_metas: List[dict],
                    batch_gt_instances_ignore: OptInstanceList = None,
                    unmap_outputs: bool = True) -> tuple:
        """mmdet's targets (see ``ATSSHead.get_targets``), batched over the
        images with ``batched_images``, kept for :meth:`loss_and_pos_coords`.

        ``ATSSHead.loss_by_feat`` computes the targets internally and returns
        only losses; keeping them here (consumed and cleared right after the
        loss) reuses that method instead of copying it.

        Returns:
            tuple: Per level, anchors (bs, n_l, 4) (zeros where invalid,
            as mmdet's ``unmap``), labels (bs, n_l) long (``num_classes``
            for negatives and invalid anchors), label weights (bs, n_l)
            float32, box targets (bs, n_l, 4) absolute (x1, y1, x2, y2),
            box weights (bs, n_l, 4); then ``avg_factor``, the positives
            summed over the images, each counted at least once (a tensor
            when batched, unless mmdet's per-level loss, which needs a
            number, reads it).
        """
        if self._batched_targets_apply(anchor_list, batch_gt_instances_ignore,
                                       unmap_outputs):
            self._targets = self._batched_targets(anchor_list,
                                                  valid_flag_list,
                                                  batch_gt_instances,
                                                  batch_img_metas)
            if not self.batched_levels:
                # ATSSHead.loss_by_feat makes a tensor of it: give a number
                self._targets = self._targets[:-1] + (int(
                    self._targets[-1]), )
        else:
            self._targets = super().get_targets(anchor_list, valid_flag_list,
                                                batch_gt_instances,
                                                batch_img_metas,
                                                batch_gt_instances_ignore,
                                                unmap_outputs)
        return self._targets

    def _batched_targets_apply(self, anchor_list: List[List[Tensor]],
                               batch_gt_instances_ignore: OptInstanceList,
                               unmap_outputs: bool) -> bool:
        """Whether :meth:`_batched_targets` gives mmdet's targets: all
        images share the anchors (``get_anchors`` builds them once) and no
        ignored box changes the assignment (the ATSS assigner uses them
        only with ``ignore_iof_thr > 0``)."""
        if self.batched_assigner is None or not unmap_outputs:
            return False
        if any(levels is not anchor_list[0] for levels in anchor_list):
            return False
        ignores = batch_gt_instances_ignore or []
        return self.assigner.ignore_iof_thr <= 0 or all(
            ignore is None or len(ignore) == 0 for ignore in ignores)

    def _batched_targets(self, anchor_list: List[List[Tensor]],
                         valid_flag_list: List[List[Tensor]],
                         batch_gt_instances: InstanceList,
                         batch_img_metas: List[dict]) -> tuple:
        """mmdet's ``get_targets`` for all images at once, without reading
        anything back from the device; see :meth:`get_targets`.

        What mmdet computes on the valid anchors and maps back with
        ``unmap`` is computed on all anchors and masked: invalid anchors
        are never candidates, get label ``num_classes``, weight 0 and zero
        anchors and targets, as ``unmap`` fills them.
        """
        num_level_anchors = [anchors.size(0) for anchors in anchor_list[0]]
        anchors = torch.cat(anchor_list[0])
        valid_flags = torch.stack([torch.cat(f) for f in valid_flag_list])
        inside_flags = batched_inside_flags(
            anchors, valid_flags, batch_img_metas,
            self.train_cfg['allowed_border'])
        gt_bboxes, gt_labels, gt_valid = pad_gt_instances(batch_gt_instances)
        gt_inds, assigned_labels = self.batched_assigner.assign(
            anchors, inside_flags, num_level_anchors, gt_bboxes, gt_labels,
            gt_valid)

        positive = gt_inds > 0
        labels = torch.where(positive, assigned_labels, self.num_classes)
        # mmdet's label weights are float32 whatever the anchors' dtype
        label_weights = inside_flags.float()
        if self.train_cfg['pos_weight'] > 0:
            label_weights = torch.where(positive,
                                        float(self.train_cfg['pos_weight']),
                                        label_weights)
        gt_index = (gt_inds - 1).clamp(min=0)[..., None].expand(-1, -1, 4)
        # reg_decoded_bbox: the targets are the ground-truth boxes
        bbox_targets = torch.where(positive[..., None],
                                   gt_bboxes.gather(1, gt_index), 0).to(
                                       anchors.dtype)
        bbox_weights = positive[..., None].to(anchors.dtype).repeat(1, 1, 4)
        anchors = torch.where(inside_flags[..., None], anchors, 0)
        # SamplingResult counts max(num_pos, 1) per image (PseudoSampler)
        avg_factor = positive.sum(1).clamp(min=1).sum()
        levels = [
            list(target.split(num_level_anchors, dim=1))
            for target in (anchors, labels, label_weights, bbox_targets,
                           bbox_weights)
        ]
        return (*levels, avg_factor)

    def loss_by_feat(
            self,
            cls_scores: List[Tensor],
            bbox_preds: List[Tensor],
            centernesses: List[Tensor],
            batch_gt_instances: InstanceList,
            batch_img_metas: List[dict],
            batch_gt_instances_ignore: OptInstanceList = None) -> dict:
        """ATSS losses; see ``ATSSHead.loss_by_feat`` for the arguments.

        With ``batched_levels`` the levels are laid side by side
        (:func:`levels_side_by_side`) and mmdet's single-level loss runs
        once on them: every loss is a sum over anchors (the classification
        and centerness losses share ``avg_factor``, the box loss is divided
        by the summed centerness targets), so the values are mmdet's.

        Returns:
            dict[str, Tensor]: ``loss_cls``, ``loss_bbox``,
            ``loss_centerness``.
        """
        if not self.batched_levels:
            return super().loss_by_feat(cls_scores, bbox_preds, centernesses,
                                        batch_gt_instances, batch_img_metas,
                                        batch_gt_instances_ignore)
        device = cls_scores[0].device
        anchors, valid_flags = self.get_anchors(
            [featmap.size()[-2:] for featmap in bbox_preds],
            batch_img_metas,
            device=device)
        anchors, labels, label_weights, bbox_targets, _, avg_factor = \
            self.get_targets(anchors, valid_flags, batch_gt_instances,
                             batch_img_metas, batch_gt_instances_ignore)
        # a tensor, not read back: the losses divide by (avg_factor + eps),
        # the same value as mmdet's Python float; at least float32 (a count
        # above 2048 is not exact in float16 under autocast)
        avg_factor = reduce_mean(
            torch.as_tensor(avg_factor, dtype=torch.float,
                            device=device)).to(
                                compute_dtype(cls_scores[0].dtype))
        loss_single = self.masked_loss_single if self.masked_loss else \
            self.loss_by_feat_single
        loss_cls, loss_bbox, loss_centerness, bbox_avg_factor = loss_single(
            torch.cat(anchors, 1),
            levels_side_by_side(cls_scores),
            levels_side_by_side(bbox_preds),
            levels_side_by_side(centernesses),
            torch.cat(labels, 1),
            torch.cat(label_weights, 1),
            torch.cat(bbox_targets, 1),
            avg_factor=avg_factor)
        bbox_avg_factor = reduce_mean(bbox_avg_factor).clamp_(min=1).to(
            loss_bbox.dtype)
        return dict(
            loss_cls=loss_cls,
            loss_bbox=loss_bbox / bbox_avg_factor,
            loss_centerness=loss_centerness)

    def masked_loss_single(self, anchors: Tensor, cls_score: Tensor,
                           bbox_pred: Tensor, centerness: Tensor,
                           labels: Tensor, label_weights: Tensor,
                           bbox_targets: Tensor,
                           avg_factor: Union[Tensor, float]) -> tuple:
        """``ATSSHead.loss_by_feat_single`` without reading the device.

        mmdet gathers the positive anchors (a ``nonzero``, whose size the
        host must read), computes their centerness targets (asserting on
        the host that none is NaN: another read), and the box and
        centerness losses over them. Here both losses run over every
        anchor, each term weighted by the positive mask: per anchor the
        same operations, so the positives' terms are mmdet's bit for bit
        and the sums add zeros (another order of the additions).

        Args:
            anchors (Tensor): (bs, A, 4) absolute (x1, y1, x2, y2).
            cls_score (Tensor): (bs, num_classes, h, w) logits.
            bbox_pred (Tensor): (bs, 4, h, w) deltas from the anchors.
            centerness (Tensor): (bs, 1, h, w) logits; A = h * w.
            labels (Tensor): (bs, A) long, ``num_classes`` for negatives.
            label_weights (Tensor): (bs, A).
            bbox_targets (Tensor): (bs, A, 4) absolute (x1, y1, x2, y2).
            avg_factor (Tensor | float): Positives over the batch.

        Returns:
            tuple[Tensor]: ``loss_cls``, ``loss_bbox`` (not yet divided by
            the centerness sum), ``loss_centerness`` and the sum of the
            centerness targets, as ``ATSSHead.loss_by_feat_single``.
        """
        anchors = anchors.reshape(-1, 4)
        cls_score = cls_score.permute(0, 2, 3, 1).reshape(
            -1, self.cls_out_channels).contiguous()
        bbox_pred = bbox_pred.permute(0, 2, 3, 1).reshape(-1, 4)
        centerness = centerness.permute(0, 2, 3, 1).reshape(-1)
        bbox_targets = bbox_targets.reshape(-1, 4)
        labels = labels.reshape(-1)
        loss_cls = self.loss_cls(
            cls_score,
            labels,
            label_weights.reshape(-1),
            avg_factor=avg_factor)

        positive = (labels >= 0) & (labels < self.num_classes)
        # the non-positives' outputs are replaced by zeros: their masked
        # terms are then finite whatever the head predicts there (mmdet
        # never computes them; an fp16 overflow would give 0 * inf = NaN)
        # and their gradients are zero. Zero deltas decode to the anchor
        # (zeros for an invalid one), whose GIoU with a zero target the
        # loss's eps keeps finite; the NaN centerness of a zero anchor and
        # target (0 / 0) is replaced in the forward, and targets carry no
        # gradient
        bbox_pred = torch.where(positive[:, None], bbox_pred, 0)
        centerness = torch.where(positive, centerness, 0)
        centerness_targets = torch.where(
            positive, centerness_of(anchors, bbox_targets), 0)
        loss_bbox = self.loss_bbox(
            self.bbox_coder.decode(anchors, bbox_pred),
            bbox_targets,
            weight=centerness_targets,
            avg_factor=1.0)
        loss_centerness = self.loss_centerness(
            centerness,
            centerness_targets,
            weight=positive.float(),
            avg_factor=avg_factor)
        return loss_cls, loss_bbox, loss_centerness, centerness_targets.sum()

    def loss_and_pos_coords(
            self, x: Tuple[Tensor, ...],
            batch_data_samples: SampleList) -> Tuple[Dict, PositiveCoords]:
        """Losses and positive coordinates on the auxiliary pyramid.

        Args:
            x (tuple[Tensor]): Pyramid levels, each (bs, dim, h_l, w_l).
            batch_data_samples (list[DetDataSample]): Ground truth and metas.

        Returns:
            tuple[dict, PositiveCoords]: mmdet's ATSS losses, and for all
            A = sum(h_l * w_l) anchors (one per location, level-major then
            row-major): anchors (bs, A, 4) absolute (x1, y1, x2, y2),
            labels (bs, A) (``num_classes`` for negatives and invalid
            anchors), targets (bs, A, 4) absolute (x1, y1, x2, y2) and the
            pyramid feature at each anchor (bs, A, dim).
        """
        if self.num_base_priors != 1:
            raise ValueError('CoATSSHead positive coordinates need exactly '
                             'one anchor per location (one ratio, one '
                             f'scale); got {self.num_base_priors}.')
        outs = self(x)
        gt_instances, gt_ignore, img_metas = unpack_gt_instances(
            batch_data_samples)
        losses = self.loss_by_feat(*outs, gt_instances, img_metas, gt_ignore)
        anchors, labels, _, bbox_targets, _, _ = self._targets
        self._targets = None
        feats = torch.cat([lvl.flatten(2) for lvl in x], dim=2).transpose(1, 2)
        pos_coords = PositiveCoords(
            coords=torch.cat(anchors, dim=1).detach(),
            labels=torch.cat(labels, dim=1),
            targets=torch.cat(bbox_targets, dim=1),
            feats=feats,
            source='atss')
        return losses, pos_coords
