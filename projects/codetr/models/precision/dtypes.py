"""The dtype a computation runs in: at least float32, float64 if asked.

Losses, matching, sampling locations and positional encodings run in
float32 when the network runs in float16 or bfloat16 (autocast), and in
float64 when the model runs in float64 (``model.double()``; the parity
tests do, ``tests/data/parity/README.md``). ``.float()`` would turn
float64 back into float32; these helpers keep it. For float32 inputs they
return the input itself, as ``.float()`` does, so float32 results are
unchanged.
"""
import torch
from torch import Tensor, nn


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for float16, bfloat16 and float32; float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


def at_least_float32(tensor: Tensor) -> Tensor:
    """``tensor`` in :func:`compute_dtype` of its dtype (itself when it is
    float32 or float64)."""
    return tensor.to(compute_dtype(tensor.dtype))


def weights_dtype(module: nn.Module) -> torch.dtype:
    """:func:`compute_dtype` of ``module``'s first floating parameter
    (float32 without one): the dtype for tensors a module makes from
    nothing (anchors, grids), which have no input to follow."""
    for param in module.parameters():
        if param.is_floating_point():
            return compute_dtype(param.dtype)
    return torch.float32
