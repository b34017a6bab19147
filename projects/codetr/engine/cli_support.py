"""The steps ``tools/train.py`` and ``tools/test.py`` share.

Each tool: loads the config (:func:`load_config`), applies its own options
(``run_config``), checks ``load_from`` and the data and prepares the process
group (:func:`prepare_run`), and builds the runner (:func:`build_runner`).
Errors a user can fix (:class:`DataCheckError`, :class:`RunConfigError`,
:class:`CheckpointError`) end the tool with the message alone, without a
traceback (:func:`exit_on_user_error`).
"""
import contextlib
import os
import sys
from typing import Iterator, Optional, Sequence

from mmengine.config import Config

from ..checkpoint.loading import CheckpointError, check_load_from
# Imported for registration: the hook, model wrapper and image loader the
# tools add to configs.
from ..datasets import robust_loading  # noqa: F401
from ..datasets.checks import DataCheckError, check_config_datasets
# torch >= 2.6 loads mmengine checkpoints with weights_only=True.
from ..utils import compat  # noqa: F401
from . import load_from_hook, rng_state_hook  # noqa: F401
from .cpu_distributed import setup_cpu_distributed
from .run_config import RunConfigError, set_work_dir


def is_main_process() -> bool:
    """Rank 0 (read from the launcher's environment, before the process
    group exists)."""
    return int(os.environ.get('RANK', '0')) == 0


def say(text: str) -> None:
    """Print on rank 0 only."""
    if is_main_process():
        print(text, flush=True)


def load_config(path: str, launcher: str, cfg_options: Optional[dict],
                work_dir: Optional[str]) -> Config:
    """Read the config and apply ``--launcher``, ``--cfg-options`` and
    ``--work-dir``."""
    # mmengine formats the whole config with yapf each time its text is
    # read (log, dump, visualizer, every checkpoint): about 2.6 s of CPU a
    # time for these configs, ~10 s per process start. Its own option
    # keeps the text as written instead.
    cfg = Config.fromfile(path, format_python_code=False)
    cfg.launcher = launcher
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    set_work_dir(cfg, work_dir, path)
    return cfg


def prepare_run(cfg: Config, dataloaders: Sequence[str], launcher: str,
                check_data: bool = True) -> None:
    """Check ``load_from`` (a released Co-DETR checkpoint must be converted
    first) and the datasets of ``dataloaders`` (on rank 0: a failure there
    ends every process through the launcher) and, without CUDA, set up the
    process group for gloo."""
    if is_main_process():
        check_load_from(cfg.get('load_from'))
    if check_data and is_main_process():
        check_config_datasets(
            cfg, dataloaders, log=lambda s: say(f'data check: {s}'),
            warn=lambda s: say(f'data check WARNING: {s}'))
    setup_cpu_distributed(cfg, launcher, warn=lambda s: say(f'WARNING: {s}'))


@contextlib.contextmanager
def exit_on_user_error(config_path: str) -> Iterator[None]:
    """Turn the errors a user can fix into ``error: ...`` and exit code 1."""
    try:
        yield
    except DataCheckError as err:
        sys.exit(f'error: the data of {config_path} cannot be used:\n{err}')
    except (RunConfigError, CheckpointError, RuntimeError) as err:
        sys.exit(f'error: {err}')


def build_runner(cfg: Config):
    """The config's runner (``runner_type`` or mmengine's ``Runner``)."""
    from mmdet.utils import setup_cache_size_limit_of_dynamo
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    # Fewer torch.compile recompilations when the config enables compile.
    setup_cache_size_limit_of_dynamo()
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def finish_distributed() -> None:
    """Wait for every rank, then tear the process group down.

    Left to interpreter exit, gloo's threads can be destroyed while a rank
    still uses them ("terminate called without an active exception",
    SIGABRT), and the launcher then reports a finished run as failed.
    """
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
