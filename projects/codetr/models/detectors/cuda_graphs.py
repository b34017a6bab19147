"""Inference replayed from CUDA graphs, one graph per input signature.

At batch 1 a Co-DETR forward is bound by the host: about a thousand kernel
launches from Python for ~20 ms of GPU work (docs/performance.md). A CUDA
graph records the launches of one forward once and replays them with a
single call. A graph holds fixed addresses and shapes, so one is captured
per *signature* (input shape and dtype, the image shapes the padding masks
come from, the autocast state) and the input is copied into the graph's
own buffer before each replay.

It pays where signatures repeat (a fixed input size: deployment, video,
benchmarks). A dataset resized keeping the aspect ratio, like COCO, yields
hundreds of shapes: each new one costs a capture (two eager warm-up
forwards and the capture itself) and its own memory, so at most
``max_graphs`` are kept and inputs beyond them run eagerly.
"""
from typing import Callable, Dict, Hashable, NamedTuple, Tuple

import torch
from torch import Tensor


class _Captured(NamedTuple):
    """A captured graph, the input buffer it reads and the outputs it
    writes (kept alive: the graph holds their addresses)."""
    graph: 'torch.cuda.CUDAGraph'
    static_input: Tensor
    outputs: Tuple[Tensor, ...]


class CudaGraphCache:
    """CUDA graphs of a tensor function, keyed by signature.

    A graph reads the module's tensors at the addresses they had when it was
    captured: :meth:`clear` must be called when they are replaced (the
    owning ``CoDETR`` does so on ``.to()``, ``.cuda()``, ``.half()``;
    replacing parameters otherwise, e.g. ``.half()`` on a submodule or
    ``load_state_dict(..., assign=True)``, needs an explicit ``clear()``).
    ``load_state_dict`` copying into the parameters needs nothing.

    Args:
        max_graphs (int): Most signatures captured; later ones run eagerly.
        warmup (int): Eager runs on a side stream before a capture (at
            least 1: they initialise cuBLAS/cuDNN workspaces and the cached
            constants, such as the level shapes, outside the graph).
    """

    def __init__(self, max_graphs: int, warmup: int = 2) -> None:
        if max_graphs < 1:
            raise ValueError(f'max_graphs must be >= 1, got {max_graphs}')
        if warmup < 1:
            raise ValueError(f'warmup must be >= 1, got {warmup}')
        self.max_graphs = max_graphs
        self.warmup = warmup
        self._graphs: Dict[Hashable, _Captured] = {}

    def __len__(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        """Forget every graph (their addresses are stale once the module's
        tensors move, e.g. after ``.to()`` or ``.half()``)."""
        self._graphs.clear()

    def __call__(self, fn: Callable[[Tensor], Tuple[Tensor, ...]],
                 key: Hashable, inputs: Tensor) -> Tuple[Tensor, ...]:
        """``fn(inputs)``, replayed from the graph of ``key``.

        Args:
            fn (Callable): Tensor in, tuple of tensors out; everything it
                reads besides ``inputs`` must be fixed by ``key`` and stay
                at the same addresses (module weights, cached constants).
            key (Hashable): The signature of this call, beyond the shape,
                dtype and device of ``inputs`` (added here).
            inputs (Tensor): A CUDA tensor.

        Returns:
            tuple[Tensor]: Fresh copies of the graph's outputs.
        """
        device_type = inputs.device.type
        autocast = (torch.is_autocast_enabled(device_type),
                    torch.get_autocast_dtype(device_type))
        key = (key, tuple(inputs.shape), inputs.dtype, inputs.device,
               autocast)
        entry = self._graphs.get(key)
        if entry is None:
            if len(self._graphs) >= self.max_graphs:
                return fn(inputs)
            entry = self._graphs[key] = self._capture(fn, inputs, autocast)
        entry.static_input.copy_(inputs)
        entry.graph.replay()
        return tuple(out.clone() for out in entry.outputs)

    def _capture(self, fn: Callable, inputs: Tensor,
                 autocast: tuple) -> _Captured:
        static_input = inputs.clone()

        def run() -> Tuple[Tensor, ...]:
            # autocast's cache of cast weights would hand the graph tensors
            # freed after capture: PyTorch's graph notes require it off
            with torch.autocast(
                    inputs.device.type,
                    dtype=autocast[1],
                    enabled=autocast[0],
                    cache_enabled=False):
                return tuple(fn(static_input))

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = run()
        return _Captured(graph, static_input, outputs)
