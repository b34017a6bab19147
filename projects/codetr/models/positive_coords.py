"""The interface between auxiliary heads and the query head.

Every one-to-many auxiliary head (ATSS, Faster R-CNN, FCOS, ...) hands the
query head a :class:`PositiveCoords`: the boxes it assigned, with their
labels, their ground-truth targets and their features. The query head turns
each set into customised positive queries with :func:`build_aux_targets`
(docs/design.md, positive queries).
"""
from dataclasses import dataclass
from typing import List

import torch
from mmdet.structures.bbox import bbox_xyxy_to_cxcywh
from torch import Tensor

from .device_copies import image_size_factors


@dataclass
class PositiveCoords:
    """Boxes assigned by one auxiliary head, padded to a common length.

    ``P`` is the number of candidate boxes per image (all anchors for a dense
    head, the sampled RoIs for a RoI head).

    Attributes:
        coords (Tensor): Candidate boxes, absolute (x1, y1, x2, y2) in the
            padded-batch frame, detached. Shape (B, P, 4).
        labels (Tensor): Assigned class per box, ``num_classes`` for
            negatives. Shape (B, P), long.
        targets (Tensor): Assigned ground-truth box, absolute (x1, y1, x2, y2);
            anything for negatives (zeros by convention). Shape (B, P, 4).
        feats (Tensor): Feature of each box (RoI-pooled, or the pyramid
            feature at the anchor location). Not detached: the auxiliary
            queries train the features too. Shape (B, P, C).
        source (str): Name of the producing head type, e.g. ``'atss'`` or
            ``'rcnn'``; informative only.
    """
    coords: Tensor
    labels: Tensor
    targets: Tensor
    feats: Tensor
    source: str

    def __post_init__(self) -> None:
        b, p = self.labels.shape
        for name in ('coords', 'targets'):
            shape = tuple(getattr(self, name).shape)
            if shape != (b, p, 4):
                raise ValueError(f'PositiveCoords.{name} must have shape '
                                 f'{(b, p, 4)} to match labels, got {shape}')
        if tuple(self.feats.shape[:2]) != (b, p):
            raise ValueError('PositiveCoords.feats must have shape '
                             f'({b}, {p}, C), got {tuple(self.feats.shape)}')


@dataclass
class AuxQueryTargets:
    """Customised positive queries and their one-to-many targets.

    Attributes:
        coords (Tensor): Query reference boxes, normalised (cx, cy, w, h) by
            each image's ``img_shape``. Shape (B, N, 4).
        feats (Tensor): Query features. Shape (B, N, C).
        labels (Tensor): Class targets, ``num_classes`` for padding
            (background). Shape (B, N).
        label_weights (Tensor): 1 for every slot. Shape (B, N).
        bbox_targets (Tensor): Normalised (cx, cy, w, h) targets. Shape
            (B, N, 4).
        bbox_weights (Tensor): 1 for positive slots, 0 for padding. Shape
            (B, N, 4).
    """
    coords: Tensor
    feats: Tensor
    labels: Tensor
    label_weights: Tensor
    bbox_targets: Tensor
    bbox_weights: Tensor


def build_aux_targets(pos_coords: PositiveCoords,
                      batch_img_metas: List[dict],
                      num_classes: int,
                      max_pos_coords: int = 300,
                      min_pos_coords: int = 9) -> AuxQueryTargets:
    """Select N positives per image and pad with negatives (docs/design.md,
    positive queries).

    ``N = max(min_pos_coords, min(max_pos_coords, max_i n_i))`` where ``n_i``
    is the number of positives of image ``i``; every image gets N slots. An
    image with more than N positives keeps a random subset of N; the other
    slots are filled with randomly chosen negatives of the same image.

    The selection is vectorised over the batch: each candidate gets a random
    key in [0, 1), positives get +2, and the top-N keys are taken. This draws
    positives uniformly (without replacement) first and negatives after, as
    the per-image ``randperm`` of the released code does, without a Python
    loop or host synchronisation over images.

    Args:
        pos_coords (PositiveCoords): Output of an auxiliary head.
        batch_img_metas (list[dict]): Image metas with ``img_shape`` (h, w);
            normalisation uses the image, not the padded canvas.
        num_classes (int): Background label value.
        max_pos_coords (int): Upper bound of N. Defaults to 300.
        min_pos_coords (int): Lower bound of N. Defaults to 9.

    Returns:
        AuxQueryTargets: Queries and targets of shape (B, N, ...).
    """
    labels = pos_coords.labels
    num_imgs, num_cands = labels.shape
    is_pos = (labels >= 0) & (labels < num_classes)
    num_pos = is_pos.sum(1)  # (B,)
    # N depends on the data; one scalar read per call (not per image).
    max_pos = int(num_pos.max()) if num_imgs > 0 else 0
    num_slots = max(min_pos_coords, min(max_pos_coords, max_pos))
    # A head with fewer candidates than N (tiny images) cannot fill N slots.
    num_slots = min(num_slots, num_cands)

    keys = torch.rand(labels.shape, device=labels.device) + 2.0 * is_pos
    keep = keys.topk(num_slots, dim=1).indices  # (B, N), positives first

    def take(t: Tensor) -> Tensor:
        index = keep.view(num_imgs, num_slots, *([1] * (t.dim() - 2)))
        return t.gather(1, index.expand(-1, -1, *t.shape[2:]))

    factors = image_size_factors(batch_img_metas,
                                 pos_coords.coords).unsqueeze(1)  # (B, 1, 4)

    slot_is_pos = torch.arange(num_slots, device=labels.device)[None] < \
        num_pos.clamp(max=num_slots)[:, None]  # (B, N)
    bbox_weights = slot_is_pos.unsqueeze(-1).expand(-1, -1, 4).to(
        pos_coords.coords.dtype)
    return AuxQueryTargets(
        coords=bbox_xyxy_to_cxcywh(take(pos_coords.coords) / factors),
        feats=take(pos_coords.feats),
        labels=take(labels),
        label_weights=torch.ones_like(bbox_weights[..., 0]),
        bbox_targets=bbox_xyxy_to_cxcywh(take(pos_coords.targets) / factors),
        bbox_weights=bbox_weights)
