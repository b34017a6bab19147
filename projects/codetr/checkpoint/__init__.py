"""Checkpoints of the released Co-DETR code (mmdet 2.x) in codetr.

- ``released_names``: the parameter-name mapping between the two layouts.
"""
from .released_names import (UnmappedKeysError, convert_state_dict,
                             from_released, to_released)

__all__ = [
    'UnmappedKeysError', 'convert_state_dict', 'from_released', 'to_released'
]
