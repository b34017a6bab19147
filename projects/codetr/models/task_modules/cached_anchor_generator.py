"""mmdet's anchor generator without a host-device copy per level and call.

The RPN and ATSS heads ask for their anchors and valid flags on every
training step (the RPN twice: for its loss and for its proposals), and
mmdet rebuilds them each time: per level a host-to-device copy of the base
anchors (which blocks the host) and about ten small kernels, some 300
kernel launches and 15 synchronisations per Co-DETR step.

Here the base anchors are kept on the device they were last used on, so no
copy is left, and the anchors and valid flags of the most recent level
sizes are kept in a small least-recently-used cache. A fixed input size
(large-scale-jitter crops, benchmarks) hits it every step; multi-scale
training rarely repeats a batch shape, so the cache is bounded: full-size
anchors of one level take up to a few MiB.

mmdet computes its base anchors once, in float32 (``torch.Tensor`` of the
scales and ratios), so float64 anchors would be float32 values; float64
anchors here come from base anchors computed in float64 from the same
arguments (the anchors a float64 run of mmdet's code would make).
"""
import inspect
from collections import OrderedDict
from typing import Callable, List, Tuple

import numpy as np
import torch
from mmdet.models.task_modules.prior_generators import AnchorGenerator
from mmdet.registry import TASK_UTILS
from torch import Tensor


@TASK_UTILS.register_module()
class CachedAnchorGenerator(AnchorGenerator):
    """``AnchorGenerator`` with device-resident base anchors and a bounded
    cache of per-level anchors and valid flags; the same values, arguments
    and outputs.

    The cached tensors are shared between calls and must not be modified in
    place (mmdet's heads, assigners and coders only read them); they are
    made outside inference mode, so anchors first made during an
    ``inference_mode`` evaluation can still be used in training.

    Args:
        max_cached (int): Most (level size, dtype, device) entries of each
            kind kept, least recently used dropped first. Defaults to 40:
            8 batch shapes of 5 levels.
        **kwargs: ``AnchorGenerator``'s arguments.
    """

    def __init__(self, *args, max_cached: int = 40, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.use_box_type:
            raise ValueError('CachedAnchorGenerator returns plain tensors; '
                             'use AnchorGenerator for use_box_type=True')
        self.max_cached = max_cached
        self._priors: 'OrderedDict[tuple, Tensor]' = OrderedDict()
        self._flags: 'OrderedDict[tuple, Tensor]' = OrderedDict()
        self.float64_base_anchors = self._float64_base_anchors(
            *args, **kwargs)

    def _float64_base_anchors(self, *args, **kwargs) -> List[Tensor]:
        """mmdet's base anchors, from scales and ratios in float64.

        Args:
            *args, **kwargs: ``AnchorGenerator``'s arguments.

        Returns:
            list[Tensor]: Per level (A, 4) float64 (x1, y1, x2, y2).
        """
        bound = inspect.signature(AnchorGenerator.__init__).bind(
            self, *args, **kwargs)
        bound.apply_defaults()
        arg = bound.arguments
        if arg['scales'] is not None:
            scales = np.asarray(arg['scales'], dtype=np.float64)
        else:  # as mmdet: octave scales in numpy float64
            per_octave = arg['scales_per_octave']
            scales = np.array([2**(i / per_octave)
                               for i in range(per_octave)
                               ]) * arg['octave_base_scale']
        scales = torch.tensor(scales, dtype=torch.float64)
        ratios = torch.tensor(arg['ratios'], dtype=torch.float64)
        return [
            self.gen_single_level_base_anchors(
                base_size,
                scales=scales,
                ratios=ratios,
                center=None if self.centers is None else self.centers[i])
            for i, base_size in enumerate(self.base_sizes)
        ]

    def _cached(self, cache: 'OrderedDict[tuple, Tensor]', key: tuple,
                make: Callable[[], Tensor]) -> Tensor:
        value = cache.get(key)
        if value is None:
            with torch.inference_mode(False):
                value = cache[key] = make()
            while len(cache) > self.max_cached:
                cache.popitem(last=False)
        cache.move_to_end(key)
        return value

    def single_level_grid_priors(self,
                                 featmap_size: Tuple[int, int],
                                 level_idx: int,
                                 dtype: torch.dtype = torch.float32,
                                 device='cuda') -> Tensor:
        """Anchors of one level, (h * w * num_base_anchors, 4) absolute
        (x1, y1, x2, y2); see ``AnchorGenerator``. float64 anchors come from
        the float64 base anchors."""
        device = torch.device(device)
        float64 = dtype == torch.float64
        bases = self.float64_base_anchors if float64 else self.base_anchors
        base = bases[level_idx]
        if base.device.type != device.type or (
                device.index is not None and base.device.index !=
                device.index):
            # mmdet's ``.to(device)`` of the base anchors is then a no-op
            with torch.inference_mode(False):
                bases[level_idx] = base.to(device)
        key = (tuple(featmap_size), level_idx, dtype, device)
        if float64:
            return self._cached(
                self._priors, key, lambda: self._float64_grid_priors(
                    featmap_size, level_idx, device))
        return self._cached(
            self._priors, key, lambda: super(CachedAnchorGenerator, self).
            single_level_grid_priors(featmap_size, level_idx, dtype, device))

    def _float64_grid_priors(self, featmap_size: Tuple[int, int],
                             level_idx: int, device: torch.device) -> Tensor:
        """mmdet's ``single_level_grid_priors`` on the float64 base
        anchors: (h * w * A, 4) float64, row-major, A anchors per
        location."""
        base_anchors = self.float64_base_anchors[level_idx].to(device)
        feat_h, feat_w = featmap_size
        stride_w, stride_h = self.strides[level_idx]
        shift_x = torch.arange(
            0, feat_w, device=device).to(torch.float64) * stride_w
        shift_y = torch.arange(
            0, feat_h, device=device).to(torch.float64) * stride_h
        shift_xx, shift_yy = self._meshgrid(shift_x, shift_y)
        shifts = torch.stack([shift_xx, shift_yy, shift_xx, shift_yy], dim=-1)
        return (base_anchors[None, :, :] + shifts[:, None, :]).view(-1, 4)

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
