"""mmdet's anchor generator, remembering the anchors of each level size.

The RPN and ATSS heads ask for their anchors and valid flags on every
training step (the RPN twice: for its loss and for its proposals), and
mmdet rebuilds them each time: per level a host-to-device copy of the base
anchors (which blocks the host) and about ten small kernels, some 250
launches and 15 synchronisations per Co-DETR step (issue 13). Anchors
depend only on the level's size, dtype and device, valid flags on the
level's size and the valid (unpadded) size, so each is computed once.
"""
from typing import Dict, Tuple

import torch
from mmdet.models.task_modules.prior_generators import AnchorGenerator
from mmdet.registry import TASK_UTILS
from torch import Tensor


@TASK_UTILS.register_module()
class CachedAnchorGenerator(AnchorGenerator):
    """``AnchorGenerator`` whose per-level anchors and valid flags are
    cached; the same values, arguments and outputs.

    The cached tensors are shared between calls and must not be modified in
    place (mmdet's heads, assigners and coders only read them).

    Args:
        max_cached (int): Most (level size, dtype, device) entries of each
            kind kept; later ones are computed as mmdet does. Defaults to
            1024 (multi-scale training meets a few hundred).
        **kwargs: ``AnchorGenerator``'s arguments.
    """

    def __init__(self, *args, max_cached: int = 1024, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.use_box_type:
            raise ValueError('CachedAnchorGenerator returns plain tensors; '
                             'use AnchorGenerator for use_box_type=True')
        self.max_cached = max_cached
        self._priors: Dict[tuple, Tensor] = {}
        self._flags: Dict[tuple, Tensor] = {}

    def _cached(self, cache: Dict[tuple, Tensor], key: tuple, make) -> Tensor:
        value = cache.get(key)
        if value is None:
            value = make()
            if len(cache) < self.max_cached:
                cache[key] = value
        return value

    def single_level_grid_priors(self,
                                 featmap_size: Tuple[int, int],
                                 level_idx: int,
                                 dtype: torch.dtype = torch.float32,
                                 device='cuda') -> Tensor:
        """Anchors of one level, (h * w * num_base_anchors, 4) absolute
        (x1, y1, x2, y2); see ``AnchorGenerator``."""
        key = (tuple(featmap_size), level_idx, dtype, torch.device(device))
        return self._cached(
            self._priors, key, lambda: super(CachedAnchorGenerator, self).
            single_level_grid_priors(featmap_size, level_idx, dtype, device))

    def single_level_valid_flags(self,
                                 featmap_size: Tuple[int, int],
                                 valid_size: Tuple[int, int],
                                 num_base_anchors: int,
                                 device='cuda') -> Tensor:
        """Valid flags of one level's anchors, (h * w * num_base_anchors, )
        bool; see ``AnchorGenerator``."""
        key = (tuple(featmap_size), tuple(valid_size), num_base_anchors,
               torch.device(device))
        return self._cached(
            self._flags, key, lambda: super(CachedAnchorGenerator, self).
            single_level_valid_flags(featmap_size, valid_size,
                                     num_base_anchors, device))
