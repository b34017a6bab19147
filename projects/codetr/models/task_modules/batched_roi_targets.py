"""mmdet's RoI-head training targets for all images of a batch at once.

``StandardRoIHead.loss`` runs, per image, ``MaxIoUAssigner.assign`` on the
image's proposals, ``RandomSampler.sample`` (ground truths prepended as
proposals, ``nonzero`` and ``unique`` per group) and then
``BBoxHead.get_targets`` per image: dozens of small launches and several
host reads per image. Here the proposals are padded to the batch's largest
count, the ground truths to the largest number of boxes, and each step is
one masked operation over (images, candidates); the only read from the
device is the number of sampled RoIs per image (one ``tolist``), which
fixes the shapes that follow (RoI pooling, the losses' averages, the
reported RoIs) and depends on the data: an image takes fewer than ``num``
RoIs when it has fewer candidates (e.g. few proposals) or when its
positives exceed ``num * pos_fraction`` and its negatives cannot fill the
rest.

What is equal to mmdet, tensor for tensor: the assignment (the same
comparisons on the same IoUs, by the assigner's own IoU calculator), the
ground truths as proposals (assigned to themselves, first), which
candidates can be sampled and how many, their order (positives, then
negatives, each by index in ``cat([gts, proposals])``, as after mmdet's
``unique``), labels, label weights, decoded box targets and box weights.
What differs: the random stream. Each group's subset is the one whose
uniform float64 keys are the largest (:func:`select_by_keys`), as in
:class:`DeviceRandomSampler`; the keys of the whole batch are drawn in one
``torch.rand`` call (:func:`draw_keys`).

Box format everywhere: absolute (x1, y1, x2, y2).
"""
from typing import List, NamedTuple, Optional, Tuple

import torch
from mmdet.models.task_modules import MaxIoUAssigner, RandomSampler
from mmdet.utils import InstanceList, OptInstanceList
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from ..device_copies import host_to_device
from .batched_anchor_targets import batched_max_iou_assign, pad_gt_instances
from .device_random_sampler import DeviceRandomSampler
from .sync_free_overlaps import PLAIN_OVERLAPS


def check_batched_roi_config(assigner, sampler) -> None:
    """Raise if :func:`batched_roi_targets` would not compute what mmdet's
    per-image assigner and sampler compute.

    Args:
        assigner: The RoI head's ``bbox_assigner``.
        sampler: The RoI head's ``bbox_sampler``.

    Raises:
        ValueError: Naming the option to change (``batched_images=False``
            runs mmdet's per-image code with any assigner and sampler).
    """
    hint = ' Set batched_images=False for mmdet\'s per-image path.'
    if not isinstance(assigner, MaxIoUAssigner):
        raise ValueError('CoStandardRoIHead(batched_images=True) needs a '
                         'MaxIoUAssigner (train_cfg.assigner), got '
                         f'{type(assigner).__name__}.' + hint)
    if assigner.perm_repeat_gt_cfg is not None:
        raise ValueError('CoStandardRoIHead(batched_images=True) does not '
                         'support train_cfg.assigner.perm_repeat_gt_cfg.' +
                         hint)
    if type(assigner.iou_calculator) not in PLAIN_OVERLAPS:
        raise ValueError('CoStandardRoIHead(batched_images=True) needs '
                         'train_cfg.assigner.iou_calculator BboxOverlaps2D '
                         'or SyncFreeBboxOverlaps2D, '
                         f'got {type(assigner.iou_calculator).__name__}.' +
                         hint)
    # the same distribution either way: keys are drawn here
    if type(sampler) not in (RandomSampler, DeviceRandomSampler):
        raise ValueError('CoStandardRoIHead(batched_images=True) needs '
                         'train_cfg.sampler RandomSampler or '
                         f'DeviceRandomSampler, got {type(sampler).__name__}.'
                         + hint)


def pad_proposals(proposals: List[Tensor]) -> Tuple[Tensor, Tensor]:
    """Proposals of all images padded to the largest count.

    Args:
        proposals (list[Tensor]): Per image (N_i, 4).

    Returns:
        tuple[Tensor, Tensor]: (B, N, 4) boxes, zeros where padded, and
        (B, N) bool, False on padding; N = max(N_i).
    """
    counts = torch.tensor([len(p) for p in proposals])
    boxes = pad_sequence(proposals, batch_first=True)
    valid = torch.arange(boxes.size(1)) < counts[:, None]
    # known on the host: a queued copy, not a pageable one that makes the
    # host wait for the stream
    return boxes, host_to_device(valid, boxes, dtype=torch.bool)


def ignored_proposals(assigner: MaxIoUAssigner, proposals: Tensor,
                      batch_gt_instances_ignore: OptInstanceList
                      ) -> Optional[Tensor]:
    """The proposals mmdet's ``assign`` gives IoU -1 (ignored boxes).

    Args:
        assigner (MaxIoUAssigner): ``ignore_iof_thr``,
            ``ignore_wrt_candidates``, ``iou_calculator``.
        proposals (Tensor): (B, N, 4).
        batch_gt_instances_ignore (list[InstanceData] | None): Per image
            ``bboxes`` (I_i, 4).

    Returns:
        Tensor | None: (B, N) bool, or None where nothing is ignored.
    """
    if assigner.ignore_iof_thr <= 0 or not any(
            ign is not None and len(ign) > 0
            for ign in batch_gt_instances_ignore or []):
        return None
    like = next(ign.bboxes for ign in batch_gt_instances_ignore
                if ign is not None)
    boxes = [
        ign.bboxes if ign is not None else like.new_zeros(0, 4)
        for ign in batch_gt_instances_ignore
    ]
    # zero boxes as padding: no overlap with anything, iof 0 both ways,
    # never above a threshold > 0 (mmdet skips images without any); their
    # dtype is kept, the IoU calculator promotes as in mmdet
    ignore = pad_sequence(boxes, batch_first=True)
    if assigner.ignore_wrt_candidates:
        iof = assigner.iou_calculator(proposals, ignore, mode='iof')
        iof = iof.max(dim=2).values
    else:
        iof = assigner.iou_calculator(ignore, proposals, mode='iof')
        iof = iof.max(dim=1).values
    return iof > assigner.ignore_iof_thr


def batched_roi_assign(assigner: MaxIoUAssigner, proposals: Tensor,
                       proposal_valid: Tensor, gt_bboxes: Tensor,
                       gt_labels: Tensor, gt_valid: Tensor,
                       ignored: Optional[Tensor] = None
                       ) -> Tuple[Tensor, Tensor]:
    """``MaxIoUAssigner.assign`` of every image's proposals at once.

    mmdet's decisions by :func:`batched_max_iou_assign` (whose anchors
    broadcast over the images, so per-image proposals (B, N, 4) pass as
    they are). Padded and ignored proposals are left out of it like
    anchors outside an image: never assigned (-1) and never a ground
    truth's best match, which is what mmdet's IoU of -1 on ignored ones
    amounts to; except in an image without ground truths, where mmdet
    makes every proposal negative, the ignored ones too.

    Args:
        assigner (MaxIoUAssigner): Thresholds and IoU calculator.
        proposals (Tensor): (B, N, 4), padded.
        proposal_valid (Tensor): (B, N) bool.
        gt_bboxes (Tensor): (B, G, 4), padded with zeros.
        gt_labels (Tensor): (B, G) long.
        gt_valid (Tensor): (B, G) bool.
        ignored (Tensor, optional): (B, N) bool, :func:`ignored_proposals`.

    Returns:
        tuple[Tensor, Tensor]: ``gt_inds`` (B, N) long (-1 ignored or
        padding, 0 negative, i + 1 ground truth i) and ``labels`` (B, N)
        long (-1 where not positive); on valid proposals mmdet's.
    """
    if proposals.size(1) == 0:
        # no proposal in the whole batch (a shape, known on the host): the
        # reductions over proposals would be empty; mmdet assigns nothing
        empty = proposal_valid.new_zeros(proposal_valid.shape,
                                         dtype=torch.long)
        return empty, empty
    assigned = proposal_valid
    if ignored is not None:
        has_gt = gt_valid.any(dim=1, keepdim=True)
        assigned = proposal_valid & ~(ignored & has_gt)
    return batched_max_iou_assign(assigner, proposals, assigned, gt_bboxes,
                                  gt_labels, gt_valid)


def draw_keys(shape: Tuple[int, int], device: torch.device) -> Tensor:
    """Uniform float64 keys for every candidate of the batch, one call.

    The call count (one per step) does not depend on the data; on CUDA
    one call advances the Philox offset by 4 for up to 540,672 keys
    (:class:`DeviceRandomSampler`), far above B x (G + N).

    Args:
        shape (tuple[int, int]): (B, C).
        device (torch.device): The candidates' device.

    Returns:
        Tensor: (B, C) float64 in [0, 1).
    """
    return torch.rand(shape, dtype=torch.float64, device=device)


def select_by_keys(gt_inds: Tensor, keys: Tensor, num: int,
                   pos_fraction: float,
                   neg_pos_ub: float = -1) -> Tuple[Tensor, Tensor]:
    """mmdet's ``RandomSampler`` counts, subsets chosen by the largest keys.

    Per image: the ``min(#pos, int(num * pos_fraction))`` positives
    (``gt_inds > 0``) with the largest keys, then the
    ``num - #sampled positives`` negatives (``gt_inds == 0``; bounded by
    ``int(neg_pos_ub * max(1, #sampled positives))`` if ``neg_pos_ub >= 0``)
    with the largest keys, all of a group when it has fewer. With
    independent uniform keys each subset is uniform without replacement,
    the distribution of mmdet's ``randperm`` choice; given the keys, the
    choice is :class:`DeviceRandomSampler`'s (``topk`` of the group's keys),
    so a per-image reference fed the same keys takes the same subsets
    (float64 keys practically never tie).

    Args:
        gt_inds (Tensor): (B, C) long, -1 never sampled.
        keys (Tensor): (B, C) float in [0, 1).
        num (int): RoIs per image at most.
        pos_fraction (float): Largest share of positives.
        neg_pos_ub (float): Negatives per positive at most; < 0 unbounded.

    Returns:
        tuple[Tensor, Tensor]: (B, C) bool, sampled positives and negatives.
    """
    positive, negative = gt_inds > 0, gt_inds == 0
    num_cand = gt_inds.size(1)

    def largest(group: Tensor, k: int, taken: Tensor) -> Tensor:
        # the group's keys in [0, 1), others -1: the first ``taken`` of a
        # static top-k (k fixed by the configuration, not the data) are
        # the group's largest, since ``taken`` <= the group's size
        k = min(k, num_cand)
        top = torch.where(group, keys, -1.0).topk(k, dim=1).indices
        rank_taken = torch.arange(k, device=keys.device) < taken[:, None]
        return torch.zeros_like(group).scatter_(1, top, rank_taken)

    max_pos = int(num * pos_fraction)
    pos_taken = positive.sum(dim=1).clamp(max=max_pos)
    neg_wanted = num - pos_taken
    if neg_pos_ub >= 0:
        # mmdet: int(neg_pos_ub * max(1, #pos)), the product is >= 0
        bound = (pos_taken.clamp(min=1).double() * neg_pos_ub).floor()
        neg_wanted = torch.minimum(neg_wanted, bound.long())
    neg_taken = torch.minimum(negative.sum(dim=1), neg_wanted)
    return (largest(positive, max_pos, pos_taken),
            largest(negative, num, neg_taken))


class BatchedRoITargets(NamedTuple):
    """The sampled RoIs of a batch, image after image, each image's
    positives first (by index in ``cat([gts, proposals])``), then its
    negatives: what ``bbox2roi`` of mmdet's sampling results and
    ``BBoxHead.get_targets(concat=True)`` return.

    Attributes:
        rois (Tensor): (R, 5) (image index, x1, y1, x2, y2).
        labels (Tensor): (R, ) long, ``num_classes`` on negatives.
        label_weights (Tensor): (R, ) ``pos_weight`` (1 if <= 0) on
            positives, 1 on negatives, in the proposals' dtype.
        bbox_targets (Tensor): (R, 4) the assigned ground truth (absolute
            boxes, ``reg_decoded_bbox``) on positives, 0 on negatives.
        bbox_weights (Tensor): (R, 4) 1 on positives, 0 on negatives.
        counts (list[int]): RoIs per image, summing to R.
    """
    rois: Tensor
    labels: Tensor
    label_weights: Tensor
    bbox_targets: Tensor
    bbox_weights: Tensor
    counts: List[int]


def batched_roi_targets(
        assigner: MaxIoUAssigner, sampler: RandomSampler, num_classes: int,
        pos_weight: float, proposals: List[Tensor],
        batch_gt_instances: InstanceList,
        batch_gt_instances_ignore: OptInstanceList = None
) -> BatchedRoITargets:
    """Assignment, sampling and ``BBoxHead.get_targets`` of all images.

    Args:
        assigner (MaxIoUAssigner): The RoI head's, checked by
            :func:`check_batched_roi_config`.
        sampler (RandomSampler): ``num``, ``pos_fraction``,
            ``neg_pos_ub``, ``add_gt_as_proposals``.
        num_classes (int): The bbox head's background label.
        pos_weight (float): ``train_cfg.pos_weight``.
        proposals (list[Tensor]): Per image (N_i, 4).
        batch_gt_instances (list[InstanceData]): Per image ``bboxes``
            (G_i, 4) and ``labels`` (G_i, ).
        batch_gt_instances_ignore (list[InstanceData], optional): Per
            image ignored ``bboxes``, used if ``ignore_iof_thr > 0``.

    Returns:
        BatchedRoITargets: Reads the RoI counts from the device once.
    """
    boxes, valid = pad_proposals(proposals)
    gt_bboxes, gt_labels, gt_valid = pad_gt_instances(batch_gt_instances)
    gt_inds, labels = batched_roi_assign(
        assigner, boxes, valid, gt_bboxes, gt_labels, gt_valid,
        ignored_proposals(assigner, boxes, batch_gt_instances_ignore))

    if sampler.add_gt_as_proposals:
        # mmdet's add_gt_: each truth a positive of itself, in front
        own = torch.arange(1, gt_valid.size(1) + 1, device=gt_inds.device)
        gt_inds = torch.cat([torch.where(gt_valid, own, -1), gt_inds], 1)
        labels = torch.cat([torch.where(gt_valid, gt_labels, -1), labels], 1)
        # cat promotes as mmdet's cat_boxes([gt_bboxes, priors])
        boxes = torch.cat([gt_bboxes, boxes], dim=1)
    num_imgs, num_cand = gt_inds.shape

    pos, neg = select_by_keys(gt_inds, draw_keys(gt_inds.shape, boxes.device),
                              sampler.num, sampler.pos_fraction,
                              sampler.neg_pos_ub)
    # sampled positives, then sampled negatives, each by candidate index
    # (padding sits after each image's real entries in both blocks, and is
    # never sampled, so the index order is mmdet's ``unique`` order)
    slot = torch.arange(num_cand, device=gt_inds.device)
    code = torch.where(pos, slot, torch.where(neg, slot + num_cand,
                                              slot + 2 * num_cand))
    image = torch.arange(num_imgs, device=gt_inds.device)[:, None]
    order = code.argsort(dim=1) + image * num_cand  # flat (B * C) indices
    # the one read from the device: the shapes from here on follow it
    counts = (pos | neg).sum(dim=1).tolist()
    flat = torch.cat([order[b, :n] for b, n in enumerate(counts)])

    priors = boxes.reshape(-1, 4)[flat]
    is_pos = pos.reshape(-1)[flat]
    assigned = (gt_inds.reshape(-1)[flat] - 1).clamp(min=0)
    img = torch.div(flat, num_cand, rounding_mode='floor')
    rois = torch.cat([img[:, None].to(priors.dtype), priors], dim=1)

    labels = torch.where(is_pos, labels.reshape(-1)[flat], num_classes)
    # get_targets writes into zeros of the priors' dtype
    label_weights = priors.new_ones(len(flat)).masked_fill(
        is_pos, 1.0 if pos_weight <= 0 else pos_weight)
    gt_flat = gt_bboxes.reshape(-1, 4)[img * gt_bboxes.size(1) + assigned]
    is_pos_4 = is_pos[:, None]
    bbox_targets = torch.where(is_pos_4, gt_flat.to(priors.dtype), 0)
    bbox_weights = is_pos_4.expand(-1, 4).to(priors.dtype)
    return BatchedRoITargets(rois, labels, label_weights, bbox_targets,
                             bbox_weights, counts)
