"""Read the logged training scalars once per logging interval.

mmengine's ``RuntimeInfoHook`` puts each loss of each iteration into the
message hub with ``.item()``, about 65 reads per Co-DETR iteration, and its
``OptimWrapper`` reads the gradient norm the same way. On a GPU the first
of these reads waits for the iteration's backward pass, so the host cannot
issue the next iteration while the GPU finishes this one. The hook here
keeps the iteration's values on the device and moves all of them to the
host in one copy whenever something reads the message hub: on the logger's
iterations, at the end of each epoch, before validation, at the end of
training and before a checkpoint stores the hub. The message hub then
holds exactly the values mmengine's hook would have put there.
"""
from typing import Dict, List, Optional, Tuple

import torch
from mmdet.registry import HOOKS
from mmengine.hooks import LoggerHook, RuntimeInfoHook
from mmengine.optim import OptimWrapperDict
from mmengine.utils import apply_to

from .buffered_grad_norm import BufferedGradNormMixin

Scalars = List[Tuple[str, torch.Tensor]]


@HOOKS.register_module()
class BufferedLogRuntimeInfoHook(RuntimeInfoHook):
    """``RuntimeInfoHook`` that buffers the training scalars on the device.

    It replaces the runner's default ``runtime_info`` hook
    (``default_hooks.runtime_info``) and turns on the buffering of the
    gradient norm in :class:`~.buffered_grad_norm.BufferedGradNormMixin`
    wrappers (other wrappers keep reading their norm each step).

    Args:
        interval (int, optional): Iterations between reads. Defaults to the
            ``LoggerHook``'s interval (1 without a ``LoggerHook``). Every
            iteration that ends an epoch is read as well, and so is the
            first one, which fixes the order of the keys in the log as
            mmengine's hook would.
    """

    def __init__(self, interval: Optional[int] = None) -> None:
        if interval is not None and interval < 1:
            raise ValueError(f'interval must be >= 1, got {interval}')
        self.interval = interval
        self._pending: Scalars = []
        self._wrappers: List[BufferedGradNormMixin] = []
        self._first_iter = True

    def before_train(self, runner) -> None:
        super().before_train(runner)
        self._first_iter = True
        if self.interval is None:
            loggers = [h for h in runner.hooks if isinstance(h, LoggerHook)]
            self.interval = loggers[0].interval if loggers else 1
        wrappers = runner.optim_wrapper.values() if isinstance(
            runner.optim_wrapper, OptimWrapperDict) else [runner.optim_wrapper]
        self._wrappers = [
            w for w in wrappers if isinstance(w, BufferedGradNormMixin)
        ]
        for wrapper in self._wrappers:
            wrapper.buffer_grad_norm = True
        runner.logger.info(
            f'Training scalars are read from the device every '
            f'{self.interval} iterations (BufferedLogRuntimeInfoHook); the '
            f'gradient norm too: {bool(self._wrappers)}.')

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs: Optional[Dict] = None) -> None:
        for wrapper in self._wrappers:
            self._pending.extend(wrapper.pop_buffered_scalars())
        for key, value in (outputs or {}).items():
            if isinstance(value, torch.Tensor):
                self._pending.append((f'train/{key}', value.detach()))
            else:
                runner.message_hub.update_scalar(f'train/{key}', value)
        first, self._first_iter = self._first_iter, False
        if (first or self.every_n_inner_iters(batch_idx, self.interval)
                or self.end_of_epoch(runner.train_dataloader, batch_idx)):
            self.flush(runner)

    def flush(self, runner) -> None:
        """Move the buffered values to the host in one copy per device and
        put them into the message hub in the order they were recorded."""
        for wrapper in self._wrappers:
            self._pending.extend(wrapper.pop_buffered_scalars())
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        by_device: Dict[torch.device, List[int]] = {}
        for index, (_, value) in enumerate(pending):
            by_device.setdefault(value.device, []).append(index)
        host: List[float] = [0.0] * len(pending)
        for indices in by_device.values():
            stacked = torch.stack(
                [pending[i][1].reshape(()).float() for i in indices])
            for i, number in zip(indices, stacked.cpu().tolist()):
                host[i] = number
        for (key, _), number in zip(pending, host):
            runner.message_hub.update_scalar(key, number)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        # The runner copies the message hub into the checkpoint before it
        # calls this hook: copy it again with the buffered values in it.
        self.flush(runner)
        checkpoint['message_hub'] = apply_to(runner.message_hub.state_dict(),
                                             lambda x: hasattr(x, 'cpu'),
                                             lambda x: x.cpu())

    def before_val(self, runner) -> None:
        self.flush(runner)
        super().before_val(runner)

    def after_train(self, runner) -> None:
        self.flush(runner)
        for wrapper in self._wrappers:
            wrapper.buffer_grad_norm = False
        super().after_train(runner)
