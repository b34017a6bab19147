"""Say which tensors ``load_from`` could not load because their shapes
differ: fine-tuning on a dataset with another number of classes.

mmengine loads ``load_from`` non-strictly and skips a tensor whose shape
differs from the model's, so the class layers (``cls_branches``, the RoI
head's ``fc_cls``, ATSS's ``atss_cls``, Co-DINO's ``label_embedding``, ...)
keep their initialisation while everything else is loaded. Its warning
lists every tensor in a block of "size mismatch" lines under "do not match
exactly", which reads like a failed load. :class:`LoadFromShapesHook` adds
one line that says what happened and how much was loaded.
"""
from typing import Dict, List, Tuple

import torch
from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from ..checkpoint.loading import strip_ddp_prefix


def shape_mismatches(
        checkpoint_state: Dict[str, torch.Tensor],
        model_state: Dict[str, torch.Tensor]) -> Tuple[List[str], int]:
    """Names of the model's tensors that the checkpoint holds with another
    shape, and how many tensors it holds with the model's shape.

    Args:
        checkpoint_state (dict): The checkpoint's state dict (a ``module.``
            prefix of a DDP-wrapped model is ignored, as mmengine does).
        model_state (dict): The model's state dict.
    """
    state = strip_ddp_prefix(checkpoint_state)
    mismatched = [
        name for name, tensor in state.items()
        if name in model_state and tuple(tensor.shape) != tuple(
            model_state[name].shape)
    ]
    loaded = sum(1 for name, tensor in state.items()
                 if name in model_state
                 and tuple(tensor.shape) == tuple(model_state[name].shape))
    return mismatched, loaded


@HOOKS.register_module()
class LoadFromShapesHook(Hook):
    """Log the tensors that ``load_from`` leaves initialised because their
    shapes differ (a resumed run's checkpoint must match; not checked)."""

    priority = 'NORMAL'

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if getattr(runner, '_resume', False):
            return
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        mismatched, loaded = shape_mismatches(
            checkpoint.get('state_dict', checkpoint), model.state_dict())
        if not mismatched:
            return
        runner.logger.warning(
            f'load_from: {len(mismatched)} tensors have other shapes in the '
            f'checkpoint than in the model (another number of classes?) and '
            f'keep their initialisation: {", ".join(mismatched)}. The other '
            f'{loaded} tensors of the model were loaded from the checkpoint.')
