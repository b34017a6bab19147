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
from typing import Dict, List, Optional, Tuple, Union

import torch
from mmdet.registry import HOOKS
from mmengine.hooks import LoggerHook, RuntimeInfoHook
from mmengine.optim import OptimWrapperDict
from mmengine.utils import apply_to

from .buffered_grad_norm import BufferedGradNormMixin

Scalars = List[Tuple[str, Union[torch.Tensor, int, float]]]
# Read at least this often, whatever the interval, so that the buffer
# stays small (about 65 values per Co-DETR iteration).
MAX_BUFFERED_ITERS = 1000


@HOOKS.register_module()
class BufferedLogRuntimeInfoHook(RuntimeInfoHook):
    """``RuntimeInfoHook`` that buffers the training scalars on the device.

    It replaces the runner's default ``runtime_info`` hook
    (``default_hooks.runtime_info``) and turns on the buffering of the
    gradient norm in :class:`~.buffered_grad_norm.BufferedGradNormMixin`
    wrappers (other wrappers keep reading their norm each step).

    Args:
        interval (int, optional): Iterations between reads. Defaults to the
            ``LoggerHook``'s interval (1 without a ``LoggerHook``). Also
            read: the first iteration (which fixes the order of the keys
            in the log as mmengine's hook would), each iteration that ends
            an epoch, and at least every :data:`MAX_BUFFERED_ITERS`
            iterations.

    With an ``OptimWrapperDict``, the norms of its buffered wrappers reach
    the hub wrapper by wrapper at each read, not interleaved by step.
    """

    def __init__(self, interval: Optional[int] = None) -> None:
        if interval is not None and interval < 1:
            raise ValueError(f'interval must be >= 1, got {interval}')
        self.interval = interval
        self._pending: Scalars = []
        self._wrappers: List[BufferedGradNormMixin] = []
        self._first_iter = True
        self._iters_buffered = 0

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
                value = value.detach()
            self._pending.append((f'train/{key}', value))
        first, self._first_iter = self._first_iter, False
        self._iters_buffered += 1
        if (first or self.every_n_inner_iters(batch_idx, self.interval)
                or self.end_of_epoch(runner.train_dataloader, batch_idx)
                or self._iters_buffered >= MAX_BUFFERED_ITERS):
            self.flush(runner)

    def flush(self, runner) -> None:
        """Put the buffered values into the message hub, in the order they
        were recorded, with one copy to the host per device and dtype.

        Args:
            runner (Runner): The runner whose message hub gets the values.
        """
        for wrapper in self._wrappers:
            self._pending.extend(wrapper.pop_buffered_scalars())
        self._iters_buffered = 0
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        # mmengine's .item() keeps the dtype (float64 losses, int counts):
        # so does one stack per (device, dtype) and its tolist()
        groups: Dict[Tuple[torch.device, torch.dtype], List[int]] = {}
        host = [value for _, value in pending]
        for index, value in enumerate(host):
            if isinstance(value, torch.Tensor):
                groups.setdefault((value.device, value.dtype),
                                  []).append(index)
        for indices in groups.values():
            stacked = torch.stack([host[i].reshape(()) for i in indices])
            for i, number in zip(indices, stacked.cpu().tolist()):
                host[i] = number
        for (key, _), value in zip(pending, host):
            runner.message_hub.update_scalar(key, value)

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
