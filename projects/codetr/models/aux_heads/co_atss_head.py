"""ATSS as a Co-DETR auxiliary head."""
from typing import Dict, Tuple

import torch
from mmdet.models.dense_heads import ATSSHead
from mmdet.models.utils import unpack_gt_instances
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from torch import Tensor

from ..positive_coords import PositiveCoords


@MODELS.register_module()
class CoATSSHead(ATSSHead):
    """mmdet's ``ATSSHead`` that also reports its assignment (spec 3.2).

    Losses, assignment and inference are unchanged. The only addition is
    :meth:`loss_and_pos_coords`, which returns the losses together with every
    anchor's assigned label and ground-truth box, so the query head can turn
    the positives into customised positive queries.

    The box targets must be absolute boxes, hence ``reg_decoded_bbox=True``
    (as in the released config).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not self.reg_decoded_bbox:
            raise ValueError('CoATSSHead needs reg_decoded_bbox=True: its '
                             'assigned targets become query targets and '
                             'must be absolute boxes, not deltas.')
        self._targets = None

    def get_targets(self, *args, **kwargs) -> tuple:
        """mmdet's targets, kept for :meth:`loss_and_pos_coords`.

        ``ATSSHead.loss_by_feat`` computes the targets internally and returns
        only losses; keeping them here (consumed and cleared right after the
        loss) reuses that method instead of copying it.
        """
        self._targets = super().get_targets(*args, **kwargs)
        return self._targets

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
