"""Run-time support for training and testing: a hook that keeps the random
states across resume, one that names the tensors ``load_from`` left
initialised, CPU-only distributed runs and the config edits behind the
options of ``tools/train.py`` and ``tools/test.py``, an optimizer
constructor that keeps parameter-wise learning rates in few groups, the
``tf32`` switch of float32 matrix products, and the optimizer wrappers and
runtime-info hook that read the logged scalars from the device once per
logging interval."""
from .buffered_grad_norm import (BufferedGradNormAmpOptimWrapper,
                                 BufferedGradNormOptimWrapper)
from .buffered_log_hook import BufferedLogRuntimeInfoHook
from .cpu_distributed import CPUDistributedDataParallel, setup_cpu_distributed
from .load_from_hook import LoadFromShapesHook
from .merged_groups_constructor import (MergedGroupsOptimWrapperConstructor,
                                        merge_param_groups)
from .rng_state_hook import RNGStateHook
from .tf32_hook import MatmulTF32Hook

__all__ = [
    'BufferedGradNormAmpOptimWrapper', 'BufferedGradNormOptimWrapper',
    'BufferedLogRuntimeInfoHook', 'CPUDistributedDataParallel',
    'LoadFromShapesHook', 'MatmulTF32Hook',
    'MergedGroupsOptimWrapperConstructor', 'RNGStateHook',
    'merge_param_groups', 'setup_cpu_distributed'
]
