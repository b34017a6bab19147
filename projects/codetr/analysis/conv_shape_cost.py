"""What a new input size costs the convolutions of backbone and neck.

Multi-scale training pads each batch to its largest image, so nearly
every batch gives the convolutions a shape they have not run before. On a
GPU, PyTorch's cuDNN binding (its v8 API, the default) chooses and builds
an execution plan for each convolution and shape on the host, then
caches it: a shape met again costs microseconds. ``tools/train.py``
meets new shapes all the time, the benchmark's fixed batch never
(docs/performance.md, ``tools/train.py`` throughput).

:func:`measure` times the config's backbone and neck, forward and
backward (the convolutions' data and weight gradients), on batches of
sizes not met before, then once more at each size, then repeatedly at
one fixed size. The difference between a size's first and second pass is
what a new shape costs. PyTorch's environment variable
``TORCH_CUDNN_V8_API_DISABLED=1``, set before the process starts,
switches the binding to cuDNN's older v7 API, for comparison.
"""
import os
import random
import statistics
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from torch import nn

from .bench_arms import sync

Size = Tuple[int, int]

# The deepest stride of ResNet-like backbones. Two input sizes with the
# same grid at this stride (ceil(h / 32), ceil(w / 32)) give its last
# stage and the neck's convolutions on it the same shapes; a distinct grid
# here gives every stride a distinct shape.
GRID_STRIDE = 32


def grid(size: Size, stride: int = GRID_STRIDE) -> Size:
    """The (height, width) of the feature map at ``stride`` of an input of
    ``size`` (convolutions of stride 2 with 'same' padding round up)."""
    return (-(-size[0] // stride), -(-size[1] // stride))


def distinct_sizes(count: int,
                   seed: int = 0,
                   short_side: Tuple[int, int] = (480, 800),
                   max_long_side: int = 1333,
                   exclude: Sequence[Size] = ()) -> List[Size]:
    """``count`` landscape (height, width) input sizes: the height (short
    side) in ``short_side``, the width between it and ``max_long_side``
    (pixels, both inclusive), drawn uniformly with ``seed``.

    No two sizes, and no size and one of ``exclude``, share their grid at
    :data:`GRID_STRIDE`, so each size gives every convolution of a backbone
    and neck a shape the others do not.

    Raises:
        ValueError: If the ranges hold fewer than ``count`` such sizes.
    """
    low, high = short_side
    taken = {grid(tuple(size)) for size in exclude}
    free = sorted({
        grid((h, w))
        for h in range(low, high + 1)
        for w in range(h, max_long_side + 1)
    } - taken)
    if count > len(free):
        raise ValueError(
            f'{count} sizes asked for, but heights {low}-{high} with widths '
            f'up to {max_long_side} give only {len(free)} distinct grids at '
            f'stride {GRID_STRIDE}' + (f' besides those of {list(exclude)}'
                                       if exclude else ''))
    rng = random.Random(seed)
    sizes: List[Size] = []
    while len(sizes) < count:
        short = rng.randint(low, high)
        size = (short, rng.randint(short, max_long_side))
        if grid(size) not in taken:
            taken.add(grid(size))
            sizes.append(size)
    return sizes


def cudnn_api(device: str) -> str:
    """Which convolution binding PyTorch uses on ``device``."""
    if not device.startswith('cuda'):
        return 'no cuDNN (CPU)'
    if os.environ.get('TORCH_CUDNN_V8_API_DISABLED') == '1':
        return 'cuDNN v7 API (TORCH_CUDNN_V8_API_DISABLED=1)'
    return 'cuDNN v8 API (default)'


def _timer(device: str) -> Callable[[Callable[[], None]], float]:
    """Milliseconds of ``fn()`` including the GPU work it queued."""

    def timed(fn: Callable[[], None]) -> float:
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        return 1000 * (time.perf_counter() - start)

    return timed


def count_convolutions(model: nn.Module, run: Callable[[], None]) -> int:
    """Convolution modules called in ``run()`` (forward calls only)."""
    calls = []
    handles = [
        m.register_forward_hook(lambda *_: calls.append(1))
        for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)
    ]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return len(calls)


def measure(model: nn.Module,
            sizes: Sequence[Size],
            steady_size: Size,
            batch_size: int = 2,
            steady_repeats: int = 8) -> Dict[str, object]:
    """Time forward and backward of ``model.extract_feat`` per input size.

    The model is put in training mode (frozen stages and frozen norms stay
    as the config has them). The process's PyTorch settings apply as they
    are: cuDNN's benchmark mode stays off, as the configs' ``env_cfg`` has
    it, and float32 matrix products keep their precision (no ``tf32``
    switch). Before timing, a size larger than all others
    (32 px more than their largest height and width) and ``steady_size``
    run twice each, so that the memory allocator already holds blocks
    large enough for every later batch and the first pass at a size
    measures the convolutions, not the allocation.

    Args:
        model (nn.Module): A detector with ``extract_feat`` (backbone and
            neck), on the device to measure.
        sizes (Sequence[tuple[int, int]]): (height, width) input sizes,
            each run twice in a row; no two of them, and none and
            ``steady_size``, with the same :func:`grid`
            (:func:`distinct_sizes` draws such sizes).
        steady_size (tuple[int, int]): Size run ``steady_repeats`` times
            after the others.
        batch_size (int): Images per batch.
        steady_repeats (int): Passes at ``steady_size``.

    Returns:
        dict: ``first_ms`` and ``again_ms`` (per size, forward and
        backward), ``new_size_ms`` (median of first minus again),
        ``steady_ms`` (median at ``steady_size``), ``convolutions``
        (convolution modules per forward), ``api`` and ``sizes``.

    Raises:
        ValueError: If two sizes, or a size and ``steady_size``, share
            their grid: the first pass at the later one would meet shapes
            already met.
    """
    sizes = [tuple(size) for size in sizes]
    steady_size = tuple(steady_size)
    grids: Dict[Size, Size] = {grid(steady_size): steady_size}
    for size in sizes:
        if grid(size) in grids:
            raise ValueError(
                f'input sizes {grids[grid(size)]} and {size} share their '
                f'{grid(size)} grid at stride {GRID_STRIDE} (the first is '
                f'steady_size={steady_size} or listed before the second), so '
                f'the first pass at {size} would not meet new shapes '
                'everywhere; draw the sizes with distinct_sizes')
        grids[grid(size)] = size
    device = str(next(model.parameters()).device)
    model.train()

    def forward_backward(size: Size) -> Callable[[], None]:

        def run() -> None:
            inputs = torch.randn(batch_size, 3, *size, device=device)
            feats = model.extract_feat(inputs)
            sum(f.float().mean() for f in feats).backward()

        return run

    timed = _timer(device)
    all_sizes = [*sizes, steady_size]
    largest = (max(h for h, _ in all_sizes) + 32,
               max(w for _, w in all_sizes) + 32)
    for size in (largest, steady_size):
        for _ in range(2):
            timed(forward_backward(size))
    convolutions = count_convolutions(model, forward_backward(steady_size))
    first, again = [], []
    for size in sizes:
        first.append(timed(forward_backward(size)))
        again.append(timed(forward_backward(size)))
    steady = [
        timed(forward_backward(steady_size)) for _ in range(steady_repeats)
    ]
    model.zero_grad(set_to_none=True)
    return dict(
        first_ms=first,
        again_ms=again,
        new_size_ms=statistics.median(f - a for f, a in zip(first, again)),
        steady_ms=statistics.median(steady),
        convolutions=convolutions,
        api=cudnn_api(device),
        sizes=list(sizes))
