"""Save the random number generator states in checkpoints and restore them
on resume.

mmengine's checkpoints hold the epoch/iteration, the optimizer, the parameter
schedulers and the seed, but not the generators' states: a resumed run
re-seeds and so draws different dropout masks, augmentations (when images are
loaded in the main process) and query noise than an uninterrupted run would
have. :class:`RNGStateHook` adds the Python, numpy, torch (and CUDA) states of
every rank to each checkpoint, and puts them back when training resumes.

The states are gathered from all ranks (each rank draws its own numbers)
just before ``CheckpointHook`` saves, and restored where an uninterrupted run
would continue from them: at the start of the first training epoch after
``--resume``, or, with ``IterBasedTrainLoop``, before the first batch after
the batches it replays to skip the data already trained on. Fine-tuning from
``load_from`` restores nothing.

Validation runs after the checkpoint is written and draws numbers too (the
dataloader seeds its workers from torch's generator). The hook therefore
hands the generators back to training as validation found them: training
draws the same numbers whether or not, and how often, it validates, and a
resumed run continues exactly where the uninterrupted one would.
"""
import random
from typing import Callable, Iterator, List, Optional

import numpy as np
import torch
from mmdet.registry import HOOKS
from mmengine.dist import all_gather_object, get_rank, get_world_size
from mmengine.hooks import CheckpointHook, Hook

CKPT_KEY = 'rng_state'


def get_rng_state() -> dict:
    """This process's generator states, as tensors and plain Python values
    (so that ``torch.load(weights_only=True)`` reads them).

    ``cuda`` is the state of this process's current device only: each rank
    drives one GPU (``torch.cuda.set_device(LOCAL_RANK)``), and the states of
    the other GPUs belong to the ranks that drive them.
    """
    np_state = np.random.get_state()
    state = dict(
        python=random.getstate(),
        numpy=(np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
               *np_state[2:]),
        torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore states saved by :func:`get_rng_state`, wherever the tensors of
    ``state`` were loaded.

    mmengine's resume loads the checkpoint onto the current GPU
    (``map_location='default'``), so the saved byte tensors arrive as CUDA
    tensors; numpy and torch's generators only take them from host memory.
    The CUDA state goes to the current device, the one this rank drives.
    """
    random.setstate(state['python'])
    name, keys, *rest = state['numpy']
    np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state['torch'].cpu())
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'].cpu(),
                                 device=torch.cuda.current_device())


class _RestoreBeforeBatch:
    """Iterator wrapper that calls ``restore`` before batch ``skip`` (the
    first one after ``skip`` replayed batches)."""

    def __init__(self, iterator: Iterator, skip: int,
                 restore: Callable[[], None]) -> None:
        self._iterator = iterator
        self._skip = skip
        self._restore: Optional[Callable[[], None]] = restore

    def __iter__(self) -> '_RestoreBeforeBatch':
        return self

    def __next__(self):
        if self._skip == 0 and self._restore is not None:
            self._restore()
            self._restore = None
        self._skip -= 1
        return next(self._iterator)

    def __getattr__(self, name: str):
        return getattr(self._iterator, name)


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Keep the generators' states across checkpoint and resume.

    Runs before ``CheckpointHook`` (priority ``NORMAL`` < ``VERY_LOW``) so
    that every rank's state is gathered before rank 0 writes the file.
    """

    priority = 'NORMAL'

    def __init__(self) -> None:
        self._gathered: Optional[List[dict]] = None
        self._gathered_at: Optional[int] = None
        self._to_restore: Optional[dict] = None
        self._before_val: Optional[dict] = None

    # Saving ---------------------------------------------------------------
    def _checkpoint_hook(self, runner) -> Optional[CheckpointHook]:
        for hook in runner.hooks:
            if isinstance(hook, CheckpointHook):
                return hook
        return None

    def _gather(self, runner) -> None:
        """Collect every rank's state (a collective: all ranks call it)."""
        state = get_rng_state()
        self._gathered = (all_gather_object(state)
                          if get_world_size() > 1 else [state])
        self._gathered_at = runner.iter

    def after_train_epoch(self, runner) -> None:
        hook = self._checkpoint_hook(runner)
        if hook is not None and hook.by_epoch:
            # Once per epoch; cheaper than repeating CheckpointHook's rules.
            self._gather(runner)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        hook = self._checkpoint_hook(runner)
        if hook is None or hook.by_epoch:
            return
        if hook.every_n_train_iters(runner, hook.interval, hook.save_begin) \
                or (hook.save_last and hook.is_last_train_iter(runner)):
            self._gather(runner)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self._gathered is not None and self._gathered_at == runner.iter:
            states = self._gathered
        else:  # e.g. a best checkpoint written after validation
            states = [get_rng_state()] * get_world_size()
        checkpoint[CKPT_KEY] = dict(world_size=len(states), states=states)

    # Restoring ------------------------------------------------------------
    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # Only a resumed run continues the saved random streams.
        if getattr(runner, '_resume', False) and CKPT_KEY in checkpoint:
            self._to_restore = checkpoint[CKPT_KEY]

    def before_train_epoch(self, runner) -> None:
        saved, self._to_restore = self._to_restore, None
        if saved is None:
            return
        if saved['world_size'] != get_world_size():
            runner.logger.warning(
                f'The checkpoint holds random states of {saved["world_size"]}'
                f' processes but this run has {get_world_size()}; the '
                'random streams start from the seed instead.')
            return
        state = saved['states'][get_rank()]

        def restore() -> None:
            set_rng_state(state)
            runner.logger.info('Restored the random number generator '
                               'states saved with the checkpoint.')

        loop = runner.train_loop
        skip = loop.iter if hasattr(loop, 'dataloader_iterator') else 0
        if skip > 0:
            # IterBasedTrainLoop first replays the `skip` batches already
            # trained on, drawing augmentations in the main process when
            # num_workers=0: restore after them, before the next batch.
            loop.dataloader_iterator = _RestoreBeforeBatch(
                loop.dataloader_iterator, skip, restore)
        else:
            restore()

    # Validation inside training --------------------------------------------
    def before_val_epoch(self, runner) -> None:
        self._before_val = get_rng_state()

    def after_val_epoch(self, runner, metrics=None) -> None:
        if self._before_val is not None:
            set_rng_state(self._before_val)
            self._before_val = None
