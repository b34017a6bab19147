"""mmdet's sine encodings, in the dtype of their input.

mmdet builds the frequencies (and the padding masks' cumulative sums) of
its sine encodings in float32 whatever the input: ``SinePositionalEncoding``,
``DeformableDETR.get_proposal_pos_embed`` and ``coordinate_to_encoding``
(the DINO decoder's query positions). A float64 model then gets float32
positions. The versions here compute the same expressions in the same
order, with those tensors in :func:`~..dtypes.compute_dtype` of the input:
float32 for float32, float16 and bfloat16 inputs (mmdet's values, bit for
bit) and float64 for float64.

The order matters beyond float32: where a whole row or column of a level is
padding, the normalised sine-encoding angle is ``offset / eps * scale``
(about -3.1e6 rad with Deformable DETR's offset of -0.5), whose float64
rounding (~5e-10 rad) reaches the encoder's output. The released Co-DETR
computes ``(cumsum + offset) / (last + eps) * scale / dim_t`` in this order,
as mmdet does, so the padded positions agree to the last bit in float64 too.
"""
import math
from typing import Optional

import torch
from mmdet.models.layers import SinePositionalEncoding
from torch import Tensor

from ..precision.dtypes import compute_dtype


def sine_frequencies(num_feats: int, temperature: float, dtype: torch.dtype,
                     device: torch.device) -> Tensor:
    """``temperature ** (2 * (i // 2) / num_feats)`` for i < num_feats, the
    divisors shared by a sine and a cosine channel: (num_feats, ) ``dtype``.
    """
    dim_t = torch.arange(num_feats, dtype=dtype, device=device)
    return temperature**(2 * (dim_t // 2) / num_feats)


class CoSinePositionalEncoding(SinePositionalEncoding):
    """mmdet's ``SinePositionalEncoding`` with the cumulative sums and
    frequencies in the dtype of ``input`` (at least float32); float32
    without ``input``, as mmdet. Arguments and output layout are mmdet's.
    """

    def forward(self,
                mask: Optional[Tensor],
                input: Optional[Tensor] = None) -> Tensor:
        """Sine and cosine of each position's normalised row and column.

        Args:
            mask (Tensor, optional): (bs, h, w), nonzero on padding; None
                when nothing is padded (then ``input`` gives the shape).
            input (Tensor, optional): (bs, c, h, w) features; their dtype
                is the dtype of the encoding.

        Returns:
            Tensor: (bs, 2 * num_feats, h, w): y channels, then x channels.
        """
        assert not (mask is None and input is None)
        dtype = torch.float32 if input is None else compute_dtype(input.dtype)
        if mask is not None:
            batch, height, width = mask.size()
            device = mask.device
            # mmdet turns the mask into int for ONNX export; kept as is
            not_mask = 1 - mask.to(torch.int)
            y_embed = not_mask.cumsum(1, dtype=dtype)
            x_embed = not_mask.cumsum(2, dtype=dtype)
        else:
            batch, _, height, width = input.shape
            device = input.device
            x_embed = torch.arange(
                1, width + 1, dtype=dtype,
                device=device).view(1, 1, -1).repeat(batch, height, 1)
            y_embed = torch.arange(
                1, height + 1, dtype=dtype,
                device=device).view(1, -1, 1).repeat(batch, 1, width)
        if self.normalize:
            y_embed = (y_embed + self.offset) / \
                (y_embed[:, -1:, :] + self.eps) * self.scale
            x_embed = (x_embed + self.offset) / \
                (x_embed[:, :, -1:] + self.eps) * self.scale
        dim_t = sine_frequencies(self.num_feats, self.temperature, dtype,
                                 device)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack(
            (pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()),
            dim=4).view(batch, height, width, -1)
        pos_y = torch.stack(
            (pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()),
            dim=4).view(batch, height, width, -1)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def proposal_pos_embed(proposals: Tensor,
                       num_pos_feats: int = 128,
                       temperature: int = 10000) -> Tensor:
    """mmdet's ``DeformableDETR.get_proposal_pos_embed`` with the
    frequencies in the dtype of ``proposals`` (at least float32).

    Args:
        proposals (Tensor): (bs, n, 4) unnormalised (inverse-sigmoid)
            (cx, cy, w, h).
        num_pos_feats (int): Channels per coordinate. Defaults to 128.
        temperature (int): Frequency base. Defaults to 10000.

    Returns:
        Tensor: (bs, n, 4 * num_pos_feats), the sines and cosines of cx, cy,
        w and h in this order.
    """
    dim_t = sine_frequencies(num_pos_feats, temperature,
                             compute_dtype(proposals.dtype), proposals.device)
    proposals = proposals.sigmoid() * (2 * math.pi)
    pos = proposals[:, :, :, None] / dim_t
    return torch.stack((pos[:, :, :, 0::2].sin(), pos[:, :, :, 1::2].cos()),
                       dim=4).flatten(2)


def coordinate_to_encoding(coord_tensor: Tensor,
                           num_feats: int = 128,
                           temperature: int = 10000,
                           scale: float = 2 * math.pi) -> Tensor:
    """mmdet's ``coordinate_to_encoding`` with the frequencies in the dtype
    of ``coord_tensor`` (at least float32).

    Args:
        coord_tensor (Tensor): (..., 2) (x, y) or (..., 4) (cx, cy, w, h),
            normalised.
        num_feats (int): Channels per coordinate. Defaults to 128.
        temperature (int): Frequency base. Defaults to 10000.
        scale (float): Factor applied to the coordinates. Defaults to 2 pi.

    Returns:
        Tensor: (..., 2 or 4 * num_feats), ordered y, x (, w, h).
    """
    if coord_tensor.size(-1) not in (2, 4):
        raise ValueError('Unknown pos_tensor shape(-1):'
                         f'{coord_tensor.size(-1)}')
    dim_t = sine_frequencies(num_feats, temperature,
                             compute_dtype(coord_tensor.dtype),
                             coord_tensor.device)

    def encode(coord: Tensor) -> Tensor:
        pos = (coord * scale)[..., None] / dim_t
        return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()),
                           dim=-1).flatten(2)

    channels = [1, 0] if coord_tensor.size(-1) == 2 else [1, 0, 2, 3]
    return torch.cat([encode(coord_tensor[..., c]) for c in channels], dim=-1)
