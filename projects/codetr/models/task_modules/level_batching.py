"""Dense-head losses over all pyramid levels in one pass.

mmdet's anchor heads compute their losses level by level (``multi_apply``
over five levels): five times the kernel launches, and for ATSS five
``nonzero`` synchronisations, for what are sums over anchors. Laying the
levels side by side as one map lets mmdet's own single-level loss run once
on the whole pyramid, with the same values.
"""
from typing import Sequence

import torch
from torch import Tensor


def levels_side_by_side(maps: Sequence[Tensor]) -> Tensor:
    """Per-level maps as one (bs, C, 1, sum(h_l * w_l)) map.

    A single-level loss flattens its map with ``permute(0, 2, 3, 1)`` to
    (bs * locations, C); on this map that gives every image's locations
    level-major, then row-major: the order of the targets that
    ``images_to_levels`` split per level, concatenated again along dim 1.

    Args:
        maps (Sequence[Tensor]): One (bs, C, h_l, w_l) map per level.

    Returns:
        Tensor: (bs, C, 1, sum(h_l * w_l)).
    """
    return torch.cat([m.flatten(2) for m in maps], 2).unsqueeze(2)
