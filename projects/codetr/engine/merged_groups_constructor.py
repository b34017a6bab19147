"""Parameter-wise learning rates without one optimizer group per tensor.

mmengine's ``DefaultOptimWrapperConstructor`` turns a ``paramwise_cfg``
(here: backbone and sampling offsets at 0.1x the learning rate) into one
parameter group per parameter tensor, about 500 for Co-Deformable-DETR
R50. PyTorch's optimizers loop over groups in Python and run their
``foreach`` kernels per group, so an AdamW step then costs thousands of
kernel launches instead of a few dozen. This constructor
computes exactly mmengine's per-parameter options and then merges the
groups whose options are equal: the same learning rate, weight decay and
momentum for every parameter, in a handful of groups.
"""
from typing import List, Optional

from mmdet.registry import OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.optim import DefaultOptimWrapperConstructor
from torch import nn


def merge_param_groups(groups: List[dict]) -> List[dict]:
    """Merge groups with equal options (every key but ``params``).

    Args:
        groups (list[dict]): Parameter groups, each ``params`` (a list of
            tensors) plus options such as ``lr`` and ``weight_decay``.

    Returns:
        list[dict]: One group per distinct set of options, in order of first
        appearance, its parameters in their original order.
    """
    merged = {}
    for group in groups:
        options = {k: v for k, v in group.items() if k != 'params'}
        key = tuple(sorted(options.items()))
        if key not in merged:
            merged[key] = dict(options, params=[])
        merged[key]['params'].extend(group['params'])
    return list(merged.values())


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class MergedGroupsOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` with equal-option groups merged.

    Use as ``optim_wrapper = dict(constructor=
    'MergedGroupsOptimWrapperConstructor', paramwise_cfg=..., ...)``. An
    optimizer state saved with the per-parameter layout does not load into
    the merged one (a different number of groups); the model weights do.
    """

    def add_params(self,
                   params: List[dict],
                   module: nn.Module,
                   prefix: str = '',
                   is_dcn_module: Optional[int] = None) -> None:
        if prefix:  # mmengine's recursion into the children
            super().add_params(params, module, prefix, is_dcn_module)
            return
        per_param: List[dict] = []
        super().add_params(per_param, module, prefix, is_dcn_module)
        params.extend(merge_param_groups(per_param))
