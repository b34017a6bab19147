"""A hook that kills its process, to test resuming an interrupted run.

Imported by test configs through ``custom_imports`` (``tests/`` on
``PYTHONPATH``). With ``CODETR_TEST_KILL_AT_ITER=N`` set, rank 0 sends itself
SIGKILL right after training iteration N, like the out-of-memory killer
would: no hook, ``finally`` or checkpoint code runs afterwards.
"""
import os
import signal

from mmdet.registry import HOOKS
from mmengine.dist import get_rank
from mmengine.hooks import Hook


@HOOKS.register_module()
class KillAtIterHook(Hook):
    """SIGKILL rank 0 after iteration ``$CODETR_TEST_KILL_AT_ITER``."""

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        kill_at = os.environ.get('CODETR_TEST_KILL_AT_ITER')
        if kill_at and runner.iter + 1 == int(kill_at) and get_rank() == 0:
            os.kill(os.getpid(), signal.SIGKILL)
