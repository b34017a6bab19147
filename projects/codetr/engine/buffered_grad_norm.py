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
from typing import Dict, List, Tuple

import torch
from mmdet.registry import OPTIM_WRAPPERS
from mmengine.optim import AmpOptimWrapper, OptimWrapper

# Optimizer group options that choose the implementation, not the update.
IMPLEMENTATION_OPTIONS = ('foreach', 'fused', 'capturable', 'differentiable')


def keep_implementation_options(optimizer: torch.optim.Optimizer,
                                state_dict: Dict) -> Dict:
    """A load-state-dict pre-hook: the loaded state with this optimizer's
    implementation options (fused, foreach, ...) in its groups.

    torch replaces each group's options by the saved ones on loading, so a
    checkpoint saved with a non-fused AdamW would turn the fused one of the
    configs back into the non-fused one, while its
    ``_step_supports_amp_scaling``, set once by the constructor, stays:
    under AMP the scaler then passes its flag to an optimizer that rejects
    it. With the options kept, torch also moves the loaded ``step``
    counters to the device, as the fused kernel needs.
    """
    state_dict = dict(state_dict)
    state_dict['param_groups'] = [
        dict(saved, **{
            key: group[key]
            for key in IMPLEMENTATION_OPTIONS if key in group
        }) for saved, group in zip(state_dict['param_groups'],
                                   optimizer.param_groups)
    ]
    return state_dict


class BufferedGradNormMixin:
    """Keep each clipped gradient norm on the device while buffering is on.

    ``buffer_grad_norm`` is off until a hook turns it on (the hook then owns
    the norms and fetches them with :meth:`pop_buffered_scalars`); while it
    is off, :meth:`_clip_grad` is mmengine's. The optimizer keeps its
    implementation options when a checkpoint's state is loaded into it
    (:func:`keep_implementation_options`).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.buffer_grad_norm = False
        self._norms: List[torch.Tensor] = []
        self.optimizer.register_load_state_dict_pre_hook(
            keep_implementation_options)

    def _clip_grad(self) -> None:
        """mmengine's gradient clip; while buffering, the norm is kept on
        the device instead of being logged with ``float()``."""
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
        """Take the norms clipped since the last call out of the buffer.

        Returns:
            list[tuple[str, Tensor]]: ``('train/<grad_name>', norm)`` pairs,
            oldest first; each norm a 0-d tensor on the gradients' device.
        """
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


def amp_wrapper_type(kind: str) -> str:
    """The mixed-precision wrapper type of the wrapper type ``kind``
    (a registry scope such as ``mmdet.`` is kept).

    Raises:
        ValueError: ``kind`` is none of :data:`AMP_WRAPPER_TYPES`.
    """
    scope, _, name = kind.rpartition('.')
    if name not in AMP_WRAPPER_TYPES:
        raise ValueError(
            f'mixed precision replaces optim_wrapper.type with its '
            f'mixed-precision wrapper, known for '
            f'{sorted(AMP_WRAPPER_TYPES)}, but the config uses {kind}; set '
            f'mixed precision in the config instead.')
    return f'{scope}.{AMP_WRAPPER_TYPES[name]}' if scope else \
        AMP_WRAPPER_TYPES[name]
