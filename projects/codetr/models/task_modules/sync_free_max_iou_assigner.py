"""mmdet's MaxIoU assignment without waits for the GPU.

``MaxIoUAssigner.assign_wrt_overlaps`` writes its decisions with boolean
masks (``t[mask] = v``: a ``nonzero``, i.e. a host-device synchronisation,
each) and matches low-quality boxes in a Python loop over the ground-truth
boxes that reads one comparison per box. For the RPN of Co-DETR's Faster
R-CNN branch that is 2 + 2 x num_gts waits per image and step.
The same decisions are element-wise selections and one reduction over the
boxes, computed here without a single read from the device.
"""
import torch
from mmdet.models.task_modules import AssignResult, MaxIoUAssigner
from mmdet.registry import TASK_UTILS
from torch import Tensor


@TASK_UTILS.register_module()
class SyncFreeMaxIoUAssigner(MaxIoUAssigner):
    """``MaxIoUAssigner`` whose assignment step never waits for the device.

    Same arguments and the same :class:`AssignResult` as mmdet's assigner,
    tensor for tensor (the assigned indices and labels are integers, chosen
    by the same comparisons, so there is nothing to round). In mmdet's
    low-quality loop a later ground truth overwrites an earlier one on a
    prior both best-match; here the highest qualifying index wins, which is
    the same rule. Labels come out long for any integer ``gt_labels``
    (mmdet's index write needs them long already).
    """

    def assign_wrt_overlaps(self, overlaps: Tensor,
                            gt_labels: Tensor) -> AssignResult:
        """Assign priors to ground truths by their overlaps.

        Args:
            overlaps (Tensor): (num_gts, num_priors) IoUs; -1 marks priors
                that overlap ignored boxes.
            gt_labels (Tensor): (num_gts, ) long labels.

        Returns:
            AssignResult: ``gt_inds`` (num_priors, ): -1 ignored, 0
            negative, i + 1 assigned to ground truth i; ``max_overlaps``
            (num_priors, ); ``labels`` (num_priors, ), -1 where not
            positive.
        """
        num_gts, num_priors = overlaps.shape
        if num_gts == 0 or num_priors == 0:
            # the empty cases read nothing from the device in mmdet either
            return super().assign_wrt_overlaps(overlaps, gt_labels)

        max_overlaps, argmax_overlaps = overlaps.max(dim=0)
        gt_max_overlaps, gt_argmax_overlaps = overlaps.max(dim=1)

        gt_inds = overlaps.new_full((num_priors, ), -1, dtype=torch.long)
        # mmdet's two forms; any other type (e.g. an int) assigns no negatives
        negative = None
        if isinstance(self.neg_iou_thr, float):
            negative = (max_overlaps >= 0) & (max_overlaps < self.neg_iou_thr)
        elif isinstance(self.neg_iou_thr, tuple):
            assert len(self.neg_iou_thr) == 2
            low, high = self.neg_iou_thr
            negative = (max_overlaps >= low) & (max_overlaps < high)
        if negative is not None:
            gt_inds = gt_inds.masked_fill(negative, 0)
        gt_inds = torch.where(max_overlaps >= self.pos_iou_thr,
                              argmax_overlaps + 1, gt_inds)

        if self.match_low_quality:
            gt_inds = self._match_low_quality(overlaps, gt_max_overlaps,
                                              gt_argmax_overlaps, gt_inds)

        positive = gt_inds > 0
        labels = torch.where(positive,
                             gt_labels[(gt_inds - 1).clamp(min=0)].long(), -1)
        return AssignResult(
            num_gts=num_gts,
            gt_inds=gt_inds,
            max_overlaps=max_overlaps,
            labels=labels)

    def _match_low_quality(self, overlaps: Tensor, gt_max_overlaps: Tensor,
                           gt_argmax_overlaps: Tensor,
                           gt_inds: Tensor) -> Tensor:
        """Give every ground truth its best prior(s) (mmdet's step 4).

        Args:
            overlaps (Tensor): (num_gts, num_priors).
            gt_max_overlaps (Tensor): (num_gts, ) each truth's best IoU.
            gt_argmax_overlaps (Tensor): (num_gts, ) its first best prior.
            gt_inds (Tensor): (num_priors, ) long, the assignment so far.

        Returns:
            Tensor: (num_priors, ) long, overwritten where a qualifying
            ground truth claims the prior (the highest index wins).
        """
        num_gts = overlaps.size(0)
        qualifies = gt_max_overlaps >= self.min_pos_iou
        # i + 1 for a qualifying truth, 0 otherwise: 0 never wins a max
        claim = torch.arange(
            1, num_gts + 1, device=overlaps.device,
            dtype=torch.int32) * qualifies
        if self.gt_max_assign_all:
            # every prior that reaches the truth's best IoU, ties included
            best = overlaps == gt_max_overlaps[:, None]
            winner = torch.where(best, claim[:, None], 0).amax(dim=0)
        else:
            winner = claim.new_zeros(overlaps.size(1)).scatter_reduce_(
                0, gt_argmax_overlaps, claim, reduce='amax')
        return torch.where(winner > 0, winner.long(), gt_inds)
