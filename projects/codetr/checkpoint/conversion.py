"""Convert a state dict between the three Co-DETR layouts.

- ``'released'``: the authors' code (mmdet 2.x; Swin in the original
  naming),
- ``'codetr'``: this project (mmdet 3.x modules; mmdet's Swin),
- ``'mmdet3'``: mmdet 3.x's ``projects/CO-DETR`` (the released transformer
  names; mmdet's Swin; the label embedding in the denoising generator).

Every conversion goes through the released layout, the one the other two
were defined against: mmdet3 <-> released is :mod:`.mmdet3_names`,
released <-> codetr is :mod:`.released_names` (transformer) plus
:mod:`.swin_names` (backbone).
"""
from collections import OrderedDict
from typing import Mapping

import torch

from . import mmdet3_names
from .loading import CODETR, LAYOUT_NAMES, MMDET3, RELEASED
from .released_names import convert_state_dict
from .swin_names import MMDET, ORIGINAL, convert_swin_state_dict, swin_naming

LAYOUTS = (RELEASED, CODETR, MMDET3)


def _released_to_codetr(state_dict: Mapping[str, torch.Tensor]):
    state = convert_state_dict(state_dict, to=CODETR)
    if swin_naming(state) == ORIGINAL:
        state = convert_swin_state_dict(state, to=MMDET)
    return state


def _codetr_to_released(state_dict: Mapping[str, torch.Tensor]):
    state = state_dict
    if swin_naming(state) == MMDET:
        state = convert_swin_state_dict(state, to=ORIGINAL)
    return convert_state_dict(state, to=RELEASED)


def convert_layout(state_dict: Mapping[str, torch.Tensor], source: str,
                   target: str) -> 'OrderedDict[str, torch.Tensor]':
    """Rename (and for Swin patch merging, permute) every tensor.

    Args:
        state_dict (Mapping[str, Tensor]): Tensors in the ``source`` layout.
        source (str): ``'released'``, ``'codetr'`` or ``'mmdet3'``.
        target (str): One of the same, not ``source``.

    Returns:
        OrderedDict[str, Tensor]: The tensors by their ``target`` names.

    Raises:
        ValueError: An unknown layout, or ``source == target``.
        UnmappedKeysError: Keys of modules the target cannot hold (named in
            the message), e.g. Co-DINO keys while codetr has no Co-DINO.
        UnmappedSwinKeysError: Backbone keys that are no Swin tensor.
    """
    for layout in (source, target):
        if layout not in LAYOUTS:
            raise ValueError(f'unknown layout {layout!r}; one of {LAYOUTS}')
    if source == target:
        raise ValueError(f'the state dict already uses the '
                         f'{LAYOUT_NAMES[target]} names')
    if source == MMDET3:
        state = mmdet3_names.to_released(state_dict)
    elif source == CODETR:
        state = _codetr_to_released(state_dict)
    else:
        state = OrderedDict(state_dict)
    if target == CODETR:
        return _released_to_codetr(state)
    if target == MMDET3:
        return mmdet3_names.from_released(state)
    return state
