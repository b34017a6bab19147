"""mmdet's RoI feature extractor with one host read instead of one per level.

mmdet's ``SingleRoIExtractor`` maps each RoI to a pyramid level by its
scale and pools each level's RoIs in a loop whose ``nonzero`` (the RoIs of
that level) waits for the GPU once per level: four waits per RoI head and
training step on Co-DETR's pyramid, in a step that is bound by the host
(docs/performance.md, host synchronisations).
:class:`LevelSortedRoIExtractor` sorts the RoIs by level (a stable sort:
within a level they keep their order) and reads the per-level counts
once; each level's indices are then a run of the sorted order, and
mmdet's loop runs with them: the same RoIs pooled from the same level in
the same order, written into the same rows, so features and gradients
are mmdet's.
"""
from typing import Optional, Tuple

import torch
from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
from mmdet.registry import MODELS
from torch import Tensor


@MODELS.register_module()
class LevelSortedRoIExtractor(SingleRoIExtractor):
    """``SingleRoIExtractor`` that reads the device once per call (module
    docstring). Arguments are mmdet's."""

    def forward(self,
                feats: Tuple[Tensor, ...],
                rois: Tensor,
                roi_scale_factor: Optional[float] = None) -> Tensor:
        """Pool each RoI from the level its scale maps to.

        Args:
            feats (tuple[Tensor]): Levels, each (bs, out_channels, h_l,
                w_l), finest first.
            rois (Tensor): (n, 5) RoIs, (image index, x1, y1, x2, y2) in
                input-image pixels.
            roi_scale_factor (float, optional): Scales the RoIs about their
                centres after the level is chosen, as mmdet's.

        Returns:
            Tensor: (n, out_channels, *output_size) pooled features, in the
            order of ``rois``.
        """
        num_levels = len(feats)
        if num_levels == 1:
            return super().forward(feats, rois, roi_scale_factor)
        rois = rois.type_as(feats[0])  # fp16 under AMP, as mmdet's
        levels = self.map_roi_levels(rois, num_levels)
        if roi_scale_factor is not None:
            rois = self.roi_rescale(rois, roi_scale_factor)
        # A RoI of negative area has a NaN scale, whose level (NaN cast to
        # long) lies outside [0, num_levels) where mmdet's loop finds no
        # level for it and leaves its features 0: bucket num_levels here.
        levels = torch.where((levels >= 0) & (levels < num_levels), levels,
                             num_levels)
        order = torch.argsort(levels, stable=True)
        # the one read: the number of RoIs of each bucket (not bincount,
        # which reads the largest level on CUDA first)
        buckets = torch.arange(num_levels + 1, device=levels.device)
        counts = (levels[:, None] == buckets).sum(0).tolist()
        out_size = self.roi_layers[0].output_size
        roi_feats = feats[0].new_zeros(rois.size(0), self.out_channels,
                                       *out_size)
        # mmdet's loop, each level's indices a run of the sorted order
        # instead of a nonzero
        level_rois = rois[order].split(counts)
        level_inds = order.split(counts)
        for level in range(num_levels):
            if counts[level]:
                roi_feats[level_inds[level]] = self.roi_layers[level](
                    feats[level], level_rois[level])
            else:
                # mmdet's zero term: every level stays in the graph, so
                # that data-parallel processes reduce the same parameters
                roi_feats += sum(
                    x.view(-1)[0]
                    for x in self.parameters()) * 0. + feats[level].sum() * 0.
        return roi_feats
