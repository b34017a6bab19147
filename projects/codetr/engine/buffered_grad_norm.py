"""Optimizer wrappers that clip gradients without reading the norm.

mmengine's ``OptimWrapper._clip_grad`` logs the gradient norm it clipped
with ``float(norm)``. On a GPU that read waits for the whole backward pass
to finish before the host may issue the optimizer step and the next
iteration, so every iteration starts on an idle GPU. The wrappers here clip
exactly as mmengine does (the same ``clip_grad_norm_`` call, whose scaling
stays on the device) and keep the norm as a device tensor until
:class:`~projects.codetr.engine.buffered_log_hook.BufferedLogRuntimeInfoHook`
reads the norms of a whole logging interval at once. The hook switches the
buffering on; without it they log every norm at once, as mmengine does.

Under AMP the loss scaler reads its overflow flag before each optimizer
step unless the optimizer takes the flag on the device; torch's fused
AdamW does (``AdamW(fused=True)`` sets ``_step_supports_amp_scaling``),
which is why the configs ask for it. See docs/performance.md.
"""
from typing import List, Tuple

import torch
from mmdet.registry import OPTIM_WRAPPERS
from mmengine.optim import AmpOptimWrapper, OptimWrapper


class BufferedGradNormMixin:
    """Keep each clipped gradient norm on the device while buffering is on.

    ``buffer_grad_norm`` is off until a hook turns it on (the hook then owns
    the norms and fetches them with :meth:`pop_buffered_scalars`); while it
    is off, :meth:`_clip_grad` is mmengine's.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.buffer_grad_norm = False
        self._norms: List[torch.Tensor] = []

    def _clip_grad(self) -> None:
        if not self.buffer_grad_norm:
            super()._clip_grad()
            return
        params = [
            p for group in self.optimizer.param_groups
            for p in group['params']
            if p.requires_grad and p.grad is not None
        ]
        if not params:
            return
        norm = self.clip_func(params, **self.clip_grad_kwargs)
        # clip_grad_value_ returns None: there is nothing to log then.
        if norm is not None:
            self._norms.append(norm.detach())

    def pop_buffered_scalars(self) -> List[Tuple[str, torch.Tensor]]:
        """The norms clipped since the last call, oldest first, as
        ``('train/<grad_name>', 0-d tensor)`` pairs; empties the buffer."""
        norms, self._norms = self._norms, []
        return [(f'train/{self.grad_name}', norm) for norm in norms]


@OPTIM_WRAPPERS.register_module()
class BufferedGradNormOptimWrapper(BufferedGradNormMixin, OptimWrapper):
    """mmengine's ``OptimWrapper`` whose gradient-norm log does not read the
    device each step (see :class:`BufferedGradNormMixin`)."""


@OPTIM_WRAPPERS.register_module()
class BufferedGradNormAmpOptimWrapper(BufferedGradNormMixin, AmpOptimWrapper):
    """mmengine's ``AmpOptimWrapper`` whose gradient-norm log does not read
    the device each step (see :class:`BufferedGradNormMixin`)."""


# The wrapper type ``--amp`` puts in place of each full-precision one.
AMP_WRAPPER_TYPES = {
    'OptimWrapper': 'AmpOptimWrapper',
    'AmpOptimWrapper': 'AmpOptimWrapper',
    'BufferedGradNormOptimWrapper': 'BufferedGradNormAmpOptimWrapper',
    'BufferedGradNormAmpOptimWrapper': 'BufferedGradNormAmpOptimWrapper',
}
