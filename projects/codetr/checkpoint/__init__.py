"""Checkpoints of the released Co-DETR code (mmdet 2.x) in codetr.

- ``released_names``: the parameter-name mapping between the two layouts.
- ``loading``: reading such checkpoints with ``weights_only=True``, telling
  the layout of a state dict, and the check that stops the tools before a
  released checkpoint is loaded unconverted.
"""
from .loading import (CODETR, RELEASED, UNKNOWN, CheckpointError,
                      LoadedWeights, ReleasedCheckpointError,
                      UnsafeCheckpointError, check_load_from, detect_layout,
                      load_weights)
from .released_names import (UnmappedKeysError, convert_state_dict,
                             from_released, to_released)

__all__ = [
    'CODETR', 'RELEASED', 'UNKNOWN', 'CheckpointError', 'LoadedWeights',
    'ReleasedCheckpointError', 'UnmappedKeysError', 'UnsafeCheckpointError',
    'check_load_from', 'convert_state_dict', 'detect_layout', 'from_released',
    'load_weights', 'to_released'
]
