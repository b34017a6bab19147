"""The feature levels' sizes on the device without host-device copies.

mmdet's Deformable DETR stages rebuild the ``(num_levels, 2)`` shape
tensor every forward from each feature map's shape (one host-to-device
copy per level) and read its values back where they are needed as Python
ints (two device-to-host reads per level). Every such copy blocks the host
until the GPU catches up, and none can run inside a CUDA graph capture.
The sizes are known on the host from the tensors' shapes, so here the
device tensors are built once per set of sizes and device, and carry their
host values along.
"""
from collections import OrderedDict
from typing import List, Sequence, Set, Tuple, Union

import torch
from torch import Tensor

#: Attribute of a cached shape tensor holding its sizes as Python ints.
_HOST_SIZES = '_codetr_host_sizes'
#: Entries kept (least recently used evicted); one is two tiny tensors.
_MAX_CACHED = 4096
_CACHE: 'OrderedDict[tuple, Tuple[Tensor, Tensor]]' = OrderedDict()
#: Entries read inside a CUDA graph capture: the graph holds their
#: addresses, so they are never evicted (freed memory would be replayed).
_PINNED: Set[tuple] = set()


def level_shape_tensors(sizes: Sequence[Tuple[int, int]],
                        device: Union[str, torch.device]
                        ) -> Tuple[Tensor, Tensor]:
    """``spatial_shapes`` and ``level_start_index`` of these level sizes.

    The values and dtypes of mmdet's ``DeformableDETR.pre_transformer``;
    the tensors are cached and shared, so they must not be modified in
    place (nothing in mmdet or mmcv does). They are made outside inference
    mode, so a pair first made in an ``inference_mode`` evaluation can be
    saved for backward by mmcv's deformable attention in training.

    Args:
        sizes (Sequence[tuple[int, int]]): (h, w) of every level.
        device (str | torch.device): Device of the tensors.

    Returns:
        tuple[Tensor, Tensor]: (num_levels, 2) int64 as (h, w), and
        (num_levels, ) int64 index of each level's first point in the
        flattened features.

    Raises:
        RuntimeError: For sizes first seen inside a CUDA graph capture,
            where the host-to-device copy is not allowed (run the forward
            once before capturing, as ``CudaGraphCache`` does).
    """
    sizes = tuple((int(h), int(w)) for h, w in sizes)
    key = (sizes, torch.device(device))
    capturing = torch.cuda.is_available() and \
        torch.cuda.is_current_stream_capturing()
    cached = _CACHE.get(key)
    if cached is None:
        if capturing:
            raise RuntimeError(
                f'level sizes {sizes} first seen inside a CUDA graph '
                'capture: run the forward once before capturing')
        with torch.inference_mode(False):
            shapes = torch.tensor(sizes, dtype=torch.long).view(-1, 2)
            starts = torch.cat(
                (shapes.new_zeros((1, )), shapes.prod(1).cumsum(0)[:-1]))
            shapes, starts = shapes.to(device), starts.to(device)
        setattr(shapes, _HOST_SIZES, [tuple(hw) for hw in sizes])
        cached = _CACHE[key] = (shapes, starts)
        _evict()
    _CACHE.move_to_end(key)
    if capturing:
        _PINNED.add(key)
    return cached


def _evict() -> None:
    """Drop least recently used entries beyond ``_MAX_CACHED``, never the
    pinned ones."""
    for key in list(_CACHE):
        if len(_CACHE) <= _MAX_CACHED:
            return
        if key not in _PINNED:
            del _CACHE[key]


def host_level_sizes(
        spatial_shapes: Tensor) -> Union[Tensor, List[Tuple[int, int]]]:
    """The (h, w) of every level as Python ints.

    A tensor from :func:`level_shape_tensors` answers without touching the
    device; any other is read back in one ``tolist`` (mmdet's stage
    functions read each h and w on its own: on a GPU two
    synchronisations per level). While tracing (ONNX export) the tensor is
    returned unchanged, so the sizes stay dynamic in the graph.

    Args:
        spatial_shapes (Tensor): (num_levels, 2) int64 as (h, w).

    Returns:
        list[tuple[int, int]] | Tensor: The sizes, or ``spatial_shapes``
        itself while tracing.
    """
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return spatial_shapes
    sizes = getattr(spatial_shapes, _HOST_SIZES, None)
    if sizes is not None:
        return list(sizes)
    return [(h, w) for h, w in spatial_shapes.tolist()]
