"""mmdet's RPN training targets for all images of a batch at once.

``AnchorHead.get_targets`` runs ``_get_targets_single`` once per image:
the anchors inside the image are picked by a boolean index, assigned by a
``MaxIoUAssigner``, sampled by a ``RandomSampler`` (``nonzero``, ``unique``
and ``randperm`` per image), encoded, written with index writes and mapped
back by ``unmap`` (a ``nonzero`` each): a few dozen kernel launches and
about ten host reads per image. Here the ground truths are padded to the
batch's largest count and every step is one masked operation over
(images, anchors), without a single read from the device.

The assignment is mmdet's, tensor for tensor (the same comparisons on the
same IoUs, computed by the assigner's own IoU calculator). The sampling
draws from another random stream, with mmdet's distribution: per image
``min(#positives, num * pos_fraction)`` positives uniformly without
replacement, then ``num`` minus those negatives (all if fewer) uniformly
without replacement, each subset chosen by sorting random keys.
"""
from typing import List, Optional, Tuple

import torch
from mmdet.models.task_modules import MaxIoUAssigner, RandomSampler
from mmdet.utils import InstanceList, OptInstanceList
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from ..device_copies import host_to_device
from .device_random_sampler import DeviceRandomSampler
from .sync_free_overlaps import PLAIN_OVERLAPS, sync_free_calculator


def supports_batched_targets(head, anchor_list: List[List[Tensor]],
                             batch_gt_instances_ignore: OptInstanceList,
                             unmap_outputs: bool,
                             return_sampling_results: bool) -> bool:
    """Whether :func:`batched_anchor_targets` computes what
    ``AnchorHead.get_targets`` computes for these arguments.

    Anything it does not reproduce goes to mmdet's per-image code: ignored
    boxes that the assigner uses (``ignore_iof_thr > 0``; otherwise mmdet
    leaves them out too, e.g. COCO's crowd boxes in Co-DETR's RPN),
    anchors that differ between images, another assigner or
    sampler than mmdet's MaxIoU / random ones (or options of them that
    change the priors or the IoUs), decoded-box regression and the
    per-image outputs (``unmap_outputs=False``, sampling results).
    """
    assigner, sampler = head.assigner, head.sampler
    has_ignored = assigner.ignore_iof_thr > 0 and any(
        ignore is not None and len(ignore) > 0
        for ignore in batch_gt_instances_ignore or [])
    return (unmap_outputs and not return_sampling_results
            and not has_ignored and not head.reg_decoded_bbox
            and all(levels is anchor_list[0] for levels in anchor_list)
            and isinstance(assigner, MaxIoUAssigner)
            and assigner.perm_repeat_gt_cfg is None
            and type(assigner.iou_calculator) in PLAIN_OVERLAPS
            # the same distribution, drawn here from device keys anyway
            and type(sampler) in (RandomSampler, DeviceRandomSampler)
            and not sampler.add_gt_as_proposals)


def pad_gt_instances(batch_gt_instances: InstanceList
                     ) -> Tuple[Tensor, Tensor, Tensor]:
    """Ground truths of all images padded to the largest count.

    Args:
        batch_gt_instances (list[InstanceData]): Per image ``bboxes``
            (G_i, 4) (x1, y1, x2, y2) and ``labels`` (G_i, ).

    Returns:
        tuple[Tensor, Tensor, Tensor]: ``bboxes`` (B, G, 4), zeros where
        padded; ``labels`` (B, G) long, 0 where padded; ``valid`` (B, G)
        bool. G = max(G_i, 1), so that the maxima over the boxes are
        defined for a batch without any.
    """
    bboxes = [gt.bboxes for gt in batch_gt_instances]
    labels = [gt.labels.long() for gt in batch_gt_instances]
    # one placeholder row keeps G >= 1; it is padding like any other
    bboxes.append(bboxes[0].new_zeros(1, 4))
    labels.append(labels[0].new_zeros(1))
    counts = torch.tensor([len(gt) for gt in batch_gt_instances])
    padded_bboxes = pad_sequence(bboxes, batch_first=True)[:-1]
    padded_labels = pad_sequence(labels, batch_first=True)[:-1]
    valid = torch.arange(padded_labels.size(1)) < counts[:, None]
    return padded_bboxes, padded_labels, host_to_device(
        valid, padded_labels, dtype=torch.bool)


def batched_inside_flags(flat_anchors: Tensor, valid_flags: Tensor,
                         batch_img_metas: List[dict],
                         allowed_border: int) -> Tensor:
    """mmdet's ``anchor_inside_flags`` of every image at once.

    Args:
        flat_anchors (Tensor): (A, 4) (x1, y1, x2, y2), shared by the batch.
        valid_flags (Tensor): (B, A) bool, inside each padded image.
        batch_img_metas (list[dict]): ``img_shape`` (h, w) per image.
        allowed_border (int): mmdet's ``train_cfg.allowed_border``; < 0
            keeps the valid flags alone.

    Returns:
        Tensor: (B, A) bool.
    """
    if allowed_border < 0:
        return valid_flags
    # mmdet compares with img_w + border and img_h + border
    shapes = host_to_device(
        [meta['img_shape'][:2] for meta in batch_img_metas], flat_anchors)
    img_h, img_w = shapes[:, 0:1], shapes[:, 1:2]
    return (valid_flags & (flat_anchors[:, 0] >= -allowed_border)
            & (flat_anchors[:, 1] >= -allowed_border)
            & (flat_anchors[:, 2] < img_w + allowed_border)
            & (flat_anchors[:, 3] < img_h + allowed_border))


def batched_max_iou_assign(assigner: MaxIoUAssigner, anchors: Tensor,
                           inside: Tensor, gt_bboxes: Tensor,
                           gt_labels: Tensor,
                           gt_valid: Tensor) -> Tuple[Tensor, Tensor]:
    """``MaxIoUAssigner.assign`` of every image's inside anchors at once.

    mmdet assigns ``anchors[inside[b]]`` to image b's ground truths; the
    decisions here are the same comparisons on the same IoUs, masked:
    padded ground truths never win (a zero box has IoU 0 with any anchor,
    they come after the real ones, and ``max`` returns the first maximum;
    an image without any gets mmdet's all-negative answer), and anchors
    outside take no part in a ground truth's best match.

    Args:
        assigner (MaxIoUAssigner): Its thresholds and IoU calculator.
        anchors (Tensor): (A, 4) (x1, y1, x2, y2), the same for all images.
        inside (Tensor): (B, A) bool, the anchors mmdet assigns.
        gt_bboxes (Tensor): (B, G, 4) (x1, y1, x2, y2), padded with
            zeros.
        gt_labels (Tensor): (B, G) long, padded.
        gt_valid (Tensor): (B, G) bool, False on padding.

    Returns:
        tuple[Tensor, Tensor]: ``gt_inds`` (B, A) long: -1 ignored or
        outside, 0 negative, i + 1 assigned to ground truth i; ``labels``
        (B, A) long, -1 where not positive. Inside, mmdet's ``gt_inds``
        and ``labels`` of ``anchors[inside[b]]``.
    """
    num_imgs = inside.size(0)
    # mmdet's overlaps without its host copy of eps (a GPU synchronisation)
    overlaps = sync_free_calculator(assigner.iou_calculator)(
        gt_bboxes, anchors.expand(num_imgs, -1, -1))  # (B, G, A)
    max_overlaps, argmax_overlaps = overlaps.max(dim=1)  # (B, A)

    gt_inds = torch.full_like(argmax_overlaps, -1)
    neg_thr = assigner.neg_iou_thr
    negative = None
    if isinstance(neg_thr, float):
        negative = (max_overlaps >= 0) & (max_overlaps < neg_thr)
    elif isinstance(neg_thr, tuple):
        assert len(neg_thr) == 2
        negative = (max_overlaps >= neg_thr[0]) & (max_overlaps < neg_thr[1])
    if negative is not None:
        gt_inds = gt_inds.masked_fill(negative, 0)
    gt_inds = torch.where(max_overlaps >= assigner.pos_iou_thr,
                          argmax_overlaps + 1, gt_inds)

    if assigner.match_low_quality:
        # each truth's best IoU over the image's inside anchors only
        inside_overlaps = torch.where(inside[:, None, :], overlaps, -1)
        gt_max_overlaps, gt_argmax_overlaps = inside_overlaps.max(dim=2)
        qualifies = gt_valid & (gt_max_overlaps >= assigner.min_pos_iou)
        # i + 1 for a qualifying truth, 0 otherwise; as in mmdet's loop
        # over the truths, the highest qualifying index wins a prior
        claim = torch.arange(
            1, gt_valid.size(1) + 1, device=gt_valid.device) * qualifies
        if assigner.gt_max_assign_all:
            best = inside_overlaps == gt_max_overlaps[:, :, None]
            winner = torch.where(best, claim[:, :, None], 0).amax(dim=1)
        else:
            winner = torch.zeros_like(gt_inds).scatter_reduce_(
                1, gt_argmax_overlaps, claim, reduce='amax')
        gt_inds = torch.where(winner > 0, winner, gt_inds)

    # mmdet: every prior of an image without truths is negative
    gt_inds = torch.where(gt_valid.any(dim=1, keepdim=True), gt_inds, 0)
    gt_inds = gt_inds.masked_fill(~inside, -1)
    labels = torch.where(gt_inds > 0,
                         gt_labels.gather(1, (gt_inds - 1).clamp(min=0)), -1)
    return gt_inds, labels


def batched_random_sample(sampler: RandomSampler,
                          gt_inds: Tensor) -> Tuple[Tensor, Tensor]:
    """``RandomSampler.sample`` of every image at once
    (``add_gt_as_proposals=False``).

    Positives (``gt_inds > 0``) are put first, then negatives
    (``gt_inds == 0``), each group in the order of uniform random keys; an
    image takes its first ``min(#pos, num * pos_fraction)`` positives and
    its first ``num`` minus those negatives (bounded as mmdet bounds them
    by ``neg_pos_ub``). Each group's order is a uniform random
    permutation, so each taken subset is uniform without replacement, as
    mmdet's ``randperm``; only the random stream differs. The keys are
    float64, so equal keys (which the sort would order by position) are
    as rare as 1 in 2 ** 40 pairs.

    Args:
        sampler (RandomSampler): ``num``, ``pos_fraction``,
            ``neg_pos_ub``.
        gt_inds (Tensor): (B, A) long, as :func:`batched_max_iou_assign`.

    Returns:
        tuple[Tensor, Tensor]: (B, A) bool, the sampled positives and
        negatives.
    """
    positive, negative = gt_inds > 0, gt_inds == 0
    keys = torch.rand(gt_inds.shape, dtype=torch.float64,
                      device=gt_inds.device)
    keys = keys + 2 * positive + negative  # positives > negatives > others
    order = keys.argsort(dim=1, descending=True)
    rank = torch.arange(gt_inds.size(1), device=gt_inds.device)

    num_pos = positive.sum(dim=1, keepdim=True)
    pos_taken = num_pos.clamp(max=int(sampler.num * sampler.pos_fraction))
    neg_wanted = sampler.num - pos_taken
    if sampler.neg_pos_ub >= 0:
        # int(neg_pos_ub * max(1, #pos)): floor, the product is >= 0
        bound = (pos_taken.clamp(min=1).double() *
                 sampler.neg_pos_ub).floor().long()
        neg_wanted = torch.minimum(neg_wanted, bound)
    # in sorted order the negatives start at rank num_pos
    taken = (rank < pos_taken) | ((rank >= num_pos) &
                                  (rank < num_pos + neg_wanted))
    sampled = torch.zeros_like(positive).scatter_(1, order, taken)
    return sampled & positive, sampled & negative


def batched_anchor_targets(
        head, flat_anchors: Tensor, valid_flags: Tensor,
        batch_gt_instances: InstanceList,
        batch_img_metas: List[dict]) -> Tuple[Tensor, ...]:
    """``AnchorHead._get_targets_single`` (unmapped outputs) of all images.

    Args:
        head (AnchorHead): Its ``train_cfg`` (``allowed_border``,
            ``pos_weight``), ``assigner``, ``sampler``, ``bbox_coder``,
            ``num_classes``.
        flat_anchors (Tensor): (A, 4) (x1, y1, x2, y2), all levels.
        valid_flags (Tensor): (B, A) bool.
        batch_gt_instances (list[InstanceData]): ``bboxes`` (G_i, 4)
            (x1, y1, x2, y2), ``labels`` (G_i, ).
        batch_img_metas (list[dict]): ``img_shape`` per image.

    Returns:
        tuple: ``labels`` (B, A) long (``num_classes`` where not a sampled
        positive), ``label_weights`` (B, A) float32, ``bbox_targets`` and
        ``bbox_weights`` (B, A, 4) in the anchors' dtype (encoded deltas /
        1 on sampled positives, 0 elsewhere), ``avg_factor`` (0-d tensor
        in the anchors' dtype: mmdet's Python int, the sum over images of
        max(#sampled positives, 1) + max(#sampled negatives, 1), without
        reading it back). Anchors outside an image
        get mmdet's ``unmap`` fill (label ``num_classes``, zero weights);
        unlike mmdet, an image without any inside anchor does not raise.
    """
    train_cfg = head.train_cfg
    inside = batched_inside_flags(flat_anchors, valid_flags,
                                  batch_img_metas,
                                  train_cfg['allowed_border'])

    gt_bboxes, gt_labels, gt_valid = pad_gt_instances(batch_gt_instances)
    gt_inds, assigned_labels = batched_max_iou_assign(
        head.assigner, flat_anchors, inside, gt_bboxes, gt_labels, gt_valid)
    pos, neg = batched_random_sample(head.sampler, gt_inds)

    num_imgs, num_anchors = gt_inds.shape
    assigned_gts = gt_bboxes.gather(
        1, (gt_inds - 1).clamp(min=0)[:, :, None].expand(-1, -1, 4))
    # encoded for every anchor (element-wise, so the sampled positives get
    # the values of mmdet's encode of them alone), then kept on positives
    deltas = head.bbox_coder.encode(
        flat_anchors.expand(num_imgs, -1, -1).reshape(-1, 4),
        assigned_gts.reshape(-1, 4)).view(num_imgs, num_anchors, -1)
    pos_4 = pos[:, :, None]
    bbox_targets = torch.where(pos_4, deltas.to(flat_anchors.dtype), 0)
    bbox_weights = pos_4.expand_as(bbox_targets).to(flat_anchors.dtype)

    labels = torch.where(pos, assigned_labels, head.num_classes)
    pos_weight = train_cfg['pos_weight']
    # float32 whatever the anchors' dtype, as mmdet's
    label_weights = neg.to(torch.float32).masked_fill(
        pos, 1.0 if pos_weight <= 0 else pos_weight)
    # SamplingResult.avg_factor: max(#pos, 1) + max(#neg, 1) per image
    avg_factor = (pos.sum(1).clamp(min=1) +
                  neg.sum(1).clamp(min=1)).sum().to(flat_anchors.dtype)
    return labels, label_weights, bbox_targets, bbox_weights, avg_factor


def batched_get_targets(
        head, anchor_list: List[List[Tensor]],
        valid_flag_list: List[List[Tensor]],
        batch_gt_instances: InstanceList, batch_img_metas: List[dict]
) -> Tuple[List[Tensor], List[Tensor], List[Tensor], List[Tensor],
           Optional[Tensor]]:
    """``AnchorHead.get_targets``'s outputs from
    :func:`batched_anchor_targets` (check
    :func:`supports_batched_targets` first).

    Args:
        head (AnchorHead): The head.
        anchor_list (list[list[Tensor]]): Per image (the same for all) and
            level, anchors (A_l, 4) (x1, y1, x2, y2).
        valid_flag_list (list[list[Tensor]]): Per image and level (A_l, ).
        batch_gt_instances (list[InstanceData]): Per image.
        batch_img_metas (list[dict]): Per image.

    Returns:
        tuple: Per level ``labels`` (B, A_l), ``label_weights`` (B, A_l),
        ``bbox_targets`` (B, A_l, 4), ``bbox_weights`` (B, A_l, 4); and
        ``avg_factor`` (0-d tensor).
    """
    num_level_anchors = [anchors.size(0) for anchors in anchor_list[0]]
    valid_flags = torch.stack(
        [torch.cat(flags) for flags in valid_flag_list])
    labels, label_weights, bbox_targets, bbox_weights, avg_factor = \
        batched_anchor_targets(head, torch.cat(anchor_list[0]), valid_flags,
                               batch_gt_instances, batch_img_metas)
    return (labels.split(num_level_anchors, 1),
            label_weights.split(num_level_anchors, 1),
            bbox_targets.split(num_level_anchors, 1),
            bbox_weights.split(num_level_anchors, 1), avg_factor)
