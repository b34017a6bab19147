"""Training batches padded to a multiple of a size: few distinct shapes.

With multi-scale training every batch is padded to its largest image, so
nearly every iteration has a new input shape. On a GPU each convolution
with a new shape makes cuDNN choose and build its execution plans on the
host, forward and backward, about a millisecond per convolution
(docs/performance.md, ``tools/train.py`` throughput): for the ~100
convolutions of Co-DETR's backbone, neck and dense heads that costs more
per iteration than the data pipeline. Padding to a multiple of e.g. 128
leaves a few dozen distinct shapes, whose plans PyTorch keeps.

mmdet's ``DetDataPreprocessor(pad_size_divisor=...)`` pads at test time
as well, where it would change the detections of the released models
(more padded pixels in the neck's GroupNorm and in the encoder); a batch
augment runs in training only.
"""
import math
from typing import List, Optional, Tuple

import torch.nn.functional as F
from mmdet.registry import MODELS
from torch import Tensor, nn


@MODELS.register_module()
class BatchPadToMultiple(nn.Module):
    """Pad a training batch on the bottom and right to a multiple of
    ``size_divisor`` (a ``batch_augments`` entry of ``DetDataPreprocessor``,
    which runs them in training only).

    The images keep their ``img_shape``; ``batch_input_shape`` and
    ``pad_shape`` become the padded size, as mmdet's ``BatchFixedSizePad``
    sets them, so the detector's padding masks cover the added pixels.

    Args:
        size_divisor (int): The padded height and width are multiples of
            it.
        pad_value (float): Value of the added pixels (after normalisation,
            as ``DetDataPreprocessor``'s own padding). Defaults to 0.
    """

    def __init__(self, size_divisor: int, pad_value: float = 0.) -> None:
        super().__init__()
        if size_divisor < 1:
            raise ValueError(
                f'BatchPadToMultiple: size_divisor must be >= 1, got '
                f'{size_divisor}')
        self.size_divisor = size_divisor
        self.pad_value = pad_value

    def forward(self,
                inputs: Tensor,
                data_samples: Optional[List] = None
                ) -> Tuple[Tensor, Optional[List]]:
        """Pad ``inputs`` (bs, C, H, W) to (bs, C, H', W'), H' and W' the
        next multiples of ``size_divisor``; update the samples' metainfo.
        """
        h, w = inputs.shape[-2:]
        d = self.size_divisor
        dst_h, dst_w = math.ceil(h / d) * d, math.ceil(w / d) * d
        if (dst_h, dst_w) == (h, w):
            return inputs, data_samples
        inputs = F.pad(
            inputs, (0, dst_w - w, 0, dst_h - h), value=self.pad_value)
        for sample in data_samples or []:
            sample.set_metainfo({
                'batch_input_shape': (dst_h, dst_w),
                'pad_shape': (dst_h, dst_w)
            })
        return inputs, data_samples
