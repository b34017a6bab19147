"""Checkpoints of the released Co-DETR code (mmdet 2.x) and of mmdet 3.x's
``projects/CO-DETR`` in codetr.

- ``released_names``: the parameter-name mapping between the released
  layout and codetr's.
- ``swin_names``: Swin tensors in the original naming (released code) and
  mmdet's (codetr, mmdet 3.x), patch-merging order included.
- ``mmdet3_names``: mmdet 3.x ``projects/CO-DETR`` names <-> released.
- ``dab_detr_names``: the official DAB-Deformable-DETR code's names <->
  codetr.
- ``conversion``: any layout to any other, through the released one.
- ``loading``: reading such checkpoints with ``weights_only=True``, telling
  the layout of a state dict, and the check that stops the tools before a
  foreign-layout checkpoint is loaded unconverted.
"""
from .conversion import LAYOUTS, convert_layout
from .loading import (CODETR, DAB_DETR, MMDET3, RELEASED, UNKNOWN,
                      CheckpointError, LoadedWeights, ReleasedCheckpointError,
                      UnsafeCheckpointError, check_load_from, detect_layout,
                      load_weights)
from .released_names import (UnmappedKeysError, convert_state_dict,
                             from_released, to_released)
from .swin_names import (UnmappedSwinKeysError, convert_swin_state_dict,
                         merge_to_unfold, swin_naming, unfold_to_merge)

__all__ = [
    'CODETR', 'DAB_DETR', 'LAYOUTS', 'MMDET3', 'RELEASED', 'UNKNOWN',
    'CheckpointError', 'LoadedWeights', 'ReleasedCheckpointError',
    'UnmappedKeysError', 'UnmappedSwinKeysError', 'UnsafeCheckpointError',
    'check_load_from', 'convert_layout', 'convert_state_dict',
    'convert_swin_state_dict', 'detect_layout', 'from_released',
    'load_weights', 'merge_to_unfold', 'swin_naming', 'to_released',
    'unfold_to_merge'
]
