"""Distributed training and testing on machines without CUDA.

mmengine 0.10.7 assumes a GPU per process when it starts a distributed run:
``init_dist`` calls ``torch.cuda.set_device`` before creating the process
group, and ``Runner.wrap_model`` passes ``device_ids=[LOCAL_RANK]`` to
``DistributedDataParallel``, which torch rejects for a CPU module. Both fail
on a CPU-only machine even with the ``gloo`` backend. That matters for
checking multi-process code (e.g. ``tools/dist_train.sh CONFIG 2`` in the
tests) without GPUs.

:func:`setup_cpu_distributed` works around both before the runner is built:
it switches ``nccl`` to ``gloo`` (with a warning), creates the process group
itself (``Runner.setup_env`` then skips ``init_dist``) and selects
:class:`CPUDistributedDataParallel` as the model wrapper. With CUDA it does
nothing: the backend in ``env_cfg.dist_cfg`` is used as configured.
"""
import datetime
import os
from typing import Callable

import torch
import torch.distributed as torch_dist
from mmengine.model import MMDistributedDataParallel
# Runner.wrap_model looks wrappers up in mmengine's root registry, not in
# mmdet's child registry.
from mmengine.registry import MODEL_WRAPPERS


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` for processes that run on the CPU.

    Drops ``device_ids`` / ``output_device``, which ``Runner.wrap_model``
    always passes and torch only accepts for modules on an accelerator.

    Args:
        module: The model, on the CPU.
        detect_anomalous_params: See ``MMDistributedDataParallel``.
        **kwargs: Other ``DistributedDataParallel`` arguments.
    """

    def __init__(self, module: torch.nn.Module,
                 detect_anomalous_params: bool = False, **kwargs) -> None:
        kwargs.pop('device_ids', None)
        kwargs.pop('output_device', None)
        super().__init__(
            module=module,
            detect_anomalous_params=detect_anomalous_params,
            **kwargs)


def setup_cpu_distributed(cfg, launcher: str,
                          warn: Callable[[str], None] = print) -> bool:
    """Prepare a distributed run on CPU; a no-op with CUDA or no launcher.

    Args:
        cfg: The full config; ``env_cfg.dist_cfg`` and ``model_wrapper_cfg``
            are updated in place.
        launcher: ``'none'``, ``'pytorch'``, ``'slurm'`` or ``'mpi'``.
        warn: Receives the warning when the backend is switched.

    Returns:
        bool: Whether the CPU set-up was applied.

    Raises:
        RuntimeError: For a CPU run with a launcher other than ``pytorch``.
    """
    if launcher == 'none' or torch.cuda.is_available():
        return False
    if launcher != 'pytorch':
        raise RuntimeError(
            f'No CUDA device: multi-process runs on the CPU are supported '
            f'with `--launcher pytorch` (tools/dist_train.sh, '
            f'tools/dist_test.sh), not with `--launcher {launcher}`.')
    env_cfg = cfg.setdefault('env_cfg', {})
    dist_cfg = dict(env_cfg.get('dist_cfg') or {})
    backend = dist_cfg.pop('backend', 'nccl')
    if backend == 'nccl':
        warn('No CUDA device: using the gloo backend instead of nccl '
             '(env_cfg.dist_cfg.backend).')
        backend = 'gloo'
    env_cfg['dist_cfg'] = dict(dist_cfg, backend=backend)
    if not torch_dist.is_initialized():
        timeout = dist_cfg.pop('timeout', None)
        if timeout is not None:
            dist_cfg['timeout'] = datetime.timedelta(seconds=timeout)
        dist_cfg.pop('init_backend', None)
        torch_dist.init_process_group(
            backend=backend,
            rank=int(os.environ['RANK']),
            world_size=int(os.environ['WORLD_SIZE']),
            **dist_cfg)
    wrapper = dict(cfg.get('model_wrapper_cfg') or {})
    if wrapper.get('type', 'MMDistributedDataParallel') in (
            'MMDistributedDataParallel', MMDistributedDataParallel):
        # The keyword arguments Runner.wrap_model uses without a wrapper cfg.
        wrapper.setdefault('broadcast_buffers', False)
        wrapper.setdefault('find_unused_parameters',
                           cfg.get('find_unused_parameters', False))
        wrapper['type'] = 'CPUDistributedDataParallel'
        cfg.model_wrapper_cfg = wrapper
    return True
