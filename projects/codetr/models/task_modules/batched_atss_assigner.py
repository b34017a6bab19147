"""mmdet's ATSS assignment for a whole batch at once, without host reads.

mmdet's ``ATSSAssigner.assign`` runs once per image on that image's valid
anchors (``anchors[inside_flags]``, a ``nonzero``) and reads back a
``nonzero`` of its own; ``ATSSHead`` adds sampling, index writes and
``unmap`` per image around it. :class:`BatchedATSSAssigner` assigns all
images in one pass over the anchors shared by the batch: the ground truths
are padded to the largest count with a validity mask, invalid anchors stay
in place with an infinite centre distance, and every selection is a mask,
a sort or a gather, so nothing is read back to the host.

The values are mmdet's (same expressions, element by element) with two
documented exceptions, both where mmdet's own result depends on an
implementation detail rather than on the algorithm:

- ties at the k-th place of the per-level top-k (several anchors at the
  k-th smallest distance to a box centre; common: a box centred halfway
  between anchor centres has mirror-image anchors at equal distances).
  ``torch.topk`` leaves the choice unspecified; here it runs on the whole
  level with invalid anchors at +inf, mmdet's on the valid anchors only.
  The inputs are the same where all the level's anchors are valid (an
  unpadded image), so is the choice then. On the CPU it is also the same
  where the level has at least 64 x topk valid anchors and its first topk
  anchors are valid (``topk`` then heap-selects, and the +inf entries are
  never taken in); on CUDA, whose ``topk`` takes tied values in index
  order (which the masking keeps), it should always be (not checked on a
  GPU here). Otherwise another anchor at the same distance may be chosen.
- the IoU threshold (mean + std of the candidates' IoUs) of an image with
  fewer than ``topk`` valid anchors on some level: mmdet reduces over that
  image's smaller candidate set, here it is a masked sum and a two-pass
  standard deviation, equal up to rounding. With every level full (real
  training images) the threshold is computed by the same ``sum``/``std``
  reductions as mmdet's. Only a candidate whose IoU equals the threshold
  to the last bits can be decided differently.
"""
from typing import List, Tuple

import torch
from mmdet.models.task_modules import ATSSAssigner
from torch import Tensor

from .sync_free_overlaps import sync_free_calculator

# mmdet's ATSSAssigner marks non-candidates with -INF before the max over
# the ground truths
INF = 100000000


class BatchedATSSAssigner:
    """ATSS assignment (``ATSSAssigner`` without ``alpha`` and ignored
    boxes) of a padded batch.

    Args:
        topk (int): Candidates per level and ground truth (mmdet: 9).
        iou_calculator (callable): mmdet's ``BboxOverlaps2D`` (or one that
            broadcasts over a leading batch dimension the same way).
    """

    def __init__(self, topk: int, iou_calculator) -> None:
        self.topk = topk
        self.iou_calculator = iou_calculator

    @classmethod
    def from_assigner(cls, assigner: ATSSAssigner) -> 'BatchedATSSAssigner':
        """The batched twin of an mmdet ``ATSSAssigner``.

        Raises:
            ValueError: For the cost-based DDOD variant (``alpha``), which
                needs the predictions.
        """
        if not isinstance(assigner, ATSSAssigner) or \
                assigner.alpha is not None:
            raise ValueError('BatchedATSSAssigner reproduces ATSSAssigner '
                             f'with alpha=None only; got {assigner!r}.')
        # mmdet's overlaps without their host copy (a GPU synchronisation)
        return cls(assigner.topk,
                   sync_free_calculator(assigner.iou_calculator))

    def assign(self, anchors: Tensor, valid_flags: Tensor,
               num_level_anchors: List[int], gt_bboxes: Tensor,
               gt_labels: Tensor, gt_valid: Tensor) -> Tuple[Tensor, Tensor]:
        """Assign every anchor of every image to a ground truth or to the
        background.

        Args:
            anchors (Tensor): (A, 4) anchors (x1, y1, x2, y2) of all levels,
                level after level, shared by the batch.
            valid_flags (Tensor): (bs, A) bool, the anchors mmdet would keep
                (``inside_flags``); the others are never candidates.
            num_level_anchors (list[int]): Anchors per level, summing to A.
            gt_bboxes (Tensor): (bs, G, 4) ground truths (x1, y1, x2, y2),
                padded to the batch's largest count G >= 1 (any values).
            gt_labels (Tensor): (bs, G) long labels, padded likewise.
            gt_valid (Tensor): (bs, G) bool, False for padding.

        Returns:
            tuple[Tensor, Tensor]: ``gt_inds`` (bs, A) long, 0 for
            background (invalid anchors included), i + 1 for ground truth
            i; ``labels`` (bs, A) long, the ground truth's label, -1 where
            not positive (mmdet's ``AssignResult``).
        """
        bs, num_gts = gt_valid.shape
        anchors = anchors[:, :4]
        # (bs, G, A): mmdet's (A, G) IoUs and distances, transposed so that
        # each level's anchors are a contiguous run of the sorted dimension
        overlaps = self.iou_calculator(gt_bboxes,
                                       anchors.expand(bs, -1, -1))
        anchor_cx = (anchors[:, 0] + anchors[:, 2]) / 2.0
        anchor_cy = (anchors[:, 1] + anchors[:, 3]) / 2.0
        gt_cx = (gt_bboxes[..., 0] + gt_bboxes[..., 2]) / 2.0
        gt_cy = (gt_bboxes[..., 1] + gt_bboxes[..., 3]) / 2.0
        # mmdet's bbox_center_distance: sqrt(dx ** 2 + dy ** 2)
        distances = ((anchor_cx - gt_cx[..., None]).pow(2) +
                     (anchor_cy - gt_cy[..., None]).pow(2)).sqrt()
        # invalid anchors sort after every valid one
        distances = distances.masked_fill(~valid_flags[:, None], float('inf'))

        candidates = self._candidates(distances, num_level_anchors)
        # (bs, K, G) as mmdet's candidate_overlaps: the reductions over K
        # then run over the same memory layout as mmdet's
        candidates = candidates.transpose(1, 2)
        is_candidate = valid_flags.gather(1, candidates.flatten(1)).view(
            candidates.shape) & gt_valid[:, None]
        candidate_overlaps = overlaps.transpose(1, 2).gather(1, candidates)
        threshold = self._iou_threshold(candidate_overlaps, is_candidate)
        is_pos = (candidate_overlaps >= threshold[:, None]) & is_candidate

        # the positive's centre inside its ground truth, by mmdet's margin
        cx, cy = anchor_cx[candidates], anchor_cy[candidates]
        gt_bboxes = gt_bboxes[:, None]
        is_in_gts = torch.stack([
            cx - gt_bboxes[..., 0], cy - gt_bboxes[..., 1],
            gt_bboxes[..., 2] - cx, gt_bboxes[..., 3] - cy
        ], dim=-1).amin(dim=-1) > 0.01
        is_pos &= is_in_gts

        # an anchor positive for several truths goes to the highest IoU,
        # the first truth on equal IoUs (mmdet's max over the truths);
        # the candidates of one truth are distinct anchors: no write clashes
        overlaps_inf = torch.full_like(overlaps, -INF).scatter_(
            2, candidates.transpose(1, 2),
            torch.where(is_pos, candidate_overlaps, -INF).transpose(1, 2))
        max_overlaps, argmax_overlaps = overlaps_inf.max(dim=1)
        positive = max_overlaps != -INF
        gt_inds = torch.where(positive, argmax_overlaps + 1, 0)
        labels = torch.where(positive, gt_labels.gather(1, argmax_overlaps),
                             -1)
        return gt_inds, labels

    def _candidates(self, distances: Tensor,
                    num_level_anchors: List[int]) -> Tensor:
        """Per level and ground truth, the ``min(topk, level size)``
        anchors nearest to its centre, nearest first.

        mmdet picks ``min(topk, valid anchors of the level)``; here a level
        with fewer valid anchors yields invalid ones after them (infinite
        distance), which the caller masks. Ties: see the module docstring.

        Args:
            distances (Tensor): (bs, G, A) centre distances, inf for
                invalid anchors.
            num_level_anchors (list[int]): Anchors per level.

        Returns:
            Tensor: (bs, G, K) long anchor indices into A, K = sum over
            levels of min(topk, level size).
        """
        candidates = []
        start = 0
        for num in num_level_anchors:
            _, index = distances[..., start:start + num].topk(
                min(self.topk, num), dim=-1, largest=False)
            candidates.append(index + start)
            start += num
        return torch.cat(candidates, dim=-1)

    @staticmethod
    def _iou_threshold(candidate_overlaps: Tensor,
                       is_candidate: Tensor) -> Tensor:
        """mmdet's IoU threshold, the mean plus the (unbiased) standard
        deviation of each ground truth's candidate IoUs.

        Args:
            candidate_overlaps (Tensor): (bs, K, G) IoUs of the candidates.
            is_candidate (Tensor): (bs, K, G) bool, False for the invalid
                anchors of short levels and for padded ground truths.

        Returns:
            Tensor: (bs, G) thresholds; NaN where a ground truth has fewer
            than two candidates (mmdet's ``std`` of one value), or none.
        """
        count = is_candidate.sum(1)
        masked = candidate_overlaps.where(is_candidate, 0)
        # the masked-out terms are zeros: a full set sums as mmdet's does
        mean = masked.sum(1) / count
        # mmdet's std where every slot is a candidate (the usual case);
        # otherwise a two-pass std over the candidates, equal up to rounding
        deviation = (candidate_overlaps - mean[:, None]).where(
            is_candidate, 0)
        partial_std = (deviation.pow(2).sum(1) / (count - 1)).sqrt()
        std = torch.where(count == candidate_overlaps.size(1),
                          candidate_overlaps.std(1), partial_std)
        return mean + std
