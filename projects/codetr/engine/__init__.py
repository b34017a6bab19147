"""Run-time support for training and testing: a hook that keeps the random
states across resume, CPU-only distributed runs and the config edits behind
the options of ``tools/train.py`` and ``tools/test.py``."""
from .cpu_distributed import CPUDistributedDataParallel, setup_cpu_distributed
from .rng_state_hook import RNGStateHook

__all__ = [
    'CPUDistributedDataParallel', 'RNGStateHook', 'setup_cpu_distributed'
]
