"""Host values onto the device without blocking the host.

``tensor.new_tensor(values)`` or ``torch.tensor(values, device='cuda')``
copies from pageable host memory, and PyTorch follows such a copy with a
synchronisation of the stream: the host waits until the GPU has finished
everything queued before it. In a training step that wait empties the
GPU's queue, which the host then refills kernel by kernel: on a GPU-bound
step (Co-DINO) the GPU idles for the difference. Image sizes, level
shapes and matched indices are known on the host in advance, so they are
copied from pinned memory with ``non_blocking=True`` instead: the copy is
queued like a kernel and the host goes on. PyTorch's pinned-memory
allocator keeps the host buffer alive until the copy has run.
"""
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

HostValues = Union[Sequence, np.ndarray, Tensor]


def host_to_device(values: HostValues,
                   like: Tensor,
                   dtype: Optional[torch.dtype] = None) -> Tensor:
    """``like.new_tensor(values)`` (or with ``dtype``), queued on CUDA.

    Args:
        values (sequence | ndarray | Tensor): Host data (a CPU tensor, an
            array or nested lists of numbers).
        like (Tensor): Gives the device, and the dtype when ``dtype`` is
            None.
        dtype (torch.dtype, optional): The result's dtype.

    Returns:
        Tensor: The values on ``like``'s device, as ``new_tensor`` would
        give them; on a CUDA device the copy may still be in flight (later
        work on the same stream sees its result).
    """
    host = torch.as_tensor(values, dtype=dtype or like.dtype, device='cpu')
    if like.device.type != 'cuda':
        return host.to(like.device)
    return host.pin_memory().to(like.device, non_blocking=True)


def image_size_factors(batch_img_metas: List[dict], like: Tensor) -> Tensor:
    """(bs, 4) ``[w, h, w, h]`` of each image's ``img_shape``, in ``like``'s
    dtype and on its device (:func:`host_to_device`): the factors that turn
    normalised (x1, y1, x2, y2) or (cx, cy, w, h) boxes into pixels."""
    return host_to_device([[w, h, w, h] for h, w in (
        meta['img_shape'][:2] for meta in batch_img_metas)], like)
