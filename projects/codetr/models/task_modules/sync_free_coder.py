"""mmdet's ``DeltaXYWHBBoxCoder.decode`` without its copies from the host.

mmdet's ``delta2bbox`` makes ``means`` and ``stds`` tensors with
``deltas.new_tensor(...)`` on every call: copies from pageable host
memory, each followed by a synchronisation of the stream on a GPU (the
host waits for all queued work). The RPN's proposals and ATSS's box loss
decode once per training step each. :class:`SyncFreeDeltaXYWHBBoxCoder`
keeps the two constants on each device and dtype it has seen (made once,
by :func:`host_to_device`) and applies ``delta2bbox``'s operations in its
order: the same boxes bit for bit.
"""
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder
from mmdet.registry import TASK_UTILS
from mmdet.structures.bbox import BaseBoxes, get_box_tensor
from torch import Tensor

from ..device_copies import host_to_device


@TASK_UTILS.register_module()
class SyncFreeDeltaXYWHBBoxCoder(DeltaXYWHBBoxCoder):
    """mmdet's ``DeltaXYWHBBoxCoder`` whose ``decode`` of (n, 4k) deltas
    copies nothing from the host after the first call per device and
    dtype; batched (3-D) deltas, ONNX export and ``use_box_type`` take
    mmdet's ``decode``. Arguments and ``encode`` are mmdet's."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._constants: Dict[Tuple, Tuple[Tensor, Tensor]] = {}

    def _means_stds(self, like: Tensor) -> Tuple[Tensor, Tensor]:
        """(1, 4) ``means`` and ``stds`` on ``like``'s device and dtype."""
        key = (like.device, like.dtype)
        if key not in self._constants:
            self._constants[key] = (
                host_to_device(self.means, like).view(1, -1),
                host_to_device(self.stds, like).view(1, -1))
        return self._constants[key]

    def decode(
        self,
        bboxes: Union[Tensor, BaseBoxes],
        pred_bboxes: Tensor,
        max_shape: Optional[Union[Sequence[int], Tensor]] = None,
        wh_ratio_clip: float = 16 / 1000
    ) -> Union[Tensor, BaseBoxes]:
        """Boxes from deltas, as mmdet's ``decode`` (``delta2bbox``).

        Args:
            bboxes (Tensor | BaseBoxes): (n, 4) base boxes (x1, y1, x2, y2).
            pred_bboxes (Tensor): (n, 4k) deltas (dx, dy, dw, dh) per class.
            max_shape (sequence | Tensor, optional): (h, w) to clip to.
            wh_ratio_clip (float): Bound of the width and height ratios.

        Returns:
            Tensor: (n, 4k) boxes (x1, y1, x2, y2).
        """
        if pred_bboxes.ndim != 2 or torch.onnx.is_in_onnx_export() or \
                self.use_box_type:
            return super().decode(bboxes, pred_bboxes, max_shape,
                                  wh_ratio_clip)
        rois = get_box_tensor(bboxes)
        if pred_bboxes.size(0) != rois.size(0):
            raise ValueError(f'{pred_bboxes.size(0)} deltas for '
                             f'{rois.size(0)} boxes')
        num_bboxes, num_classes = pred_bboxes.size(0), pred_bboxes.size(1) // 4
        if num_bboxes == 0:
            return pred_bboxes
        # delta2bbox's operations, in its order
        deltas = pred_bboxes.reshape(-1, 4)
        means, stds = self._means_stds(deltas)
        denorm_deltas = deltas * stds + means
        dxy = denorm_deltas[:, :2]
        dwh = denorm_deltas[:, 2:]
        rois_ = rois.repeat(1, num_classes).reshape(-1, 4)
        pxy = ((rois_[:, :2] + rois_[:, 2:]) * 0.5)
        pwh = (rois_[:, 2:] - rois_[:, :2])
        dxy_wh = pwh * dxy
        max_ratio = np.abs(np.log(wh_ratio_clip))
        if self.add_ctr_clamp:
            dxy_wh = torch.clamp(
                dxy_wh, max=self.ctr_clamp, min=-self.ctr_clamp)
            dwh = torch.clamp(dwh, max=max_ratio)
        else:
            dwh = dwh.clamp(min=-max_ratio, max=max_ratio)
        gxy = pxy + dxy_wh
        gwh = pwh * dwh.exp()
        x1y1 = gxy - (gwh * 0.5)
        x2y2 = gxy + (gwh * 0.5)
        decoded = torch.cat([x1y1, x2y2], dim=-1)
        if self.clip_border and max_shape is not None:
            decoded[..., 0::2].clamp_(min=0, max=max_shape[1])
            decoded[..., 1::2].clamp_(min=0, max=max_shape[0])
        return decoded.reshape(num_bboxes, -1)
