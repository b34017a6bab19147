"""Convert a state dict between the three Co-DETR layouts.

- ``'released'``: the authors' code (mmdet 2.x; Swin in the original
  naming),
- ``'codetr'``: this project (mmdet 3.x modules; mmdet's Swin),
- ``'mmdet3'``: mmdet 3.x's ``projects/CO-DETR`` (the released transformer
  names; mmdet's Swin; the label embedding in the denoising generator),
- ``'dab-detr'``: the official DAB-Deformable-DETR code
  (:mod:`.dab_detr_names`), to and from codetr only.

Every conversion goes through the released layout, the one the other two
were defined against: mmdet3 <-> released is :mod:`.mmdet3_names`,
released <-> codetr is :mod:`.released_names` (transformer) plus
:mod:`.swin_names` (backbone).
"""
from collections import OrderedDict
from typing import Mapping

import torch

from . import mmdet3_names
from .dab_detr_names import convert_dab_detr_state_dict, to_dab_detr
from .loading import CODETR, DAB_DETR, LAYOUT_NAMES, MMDET3, RELEASED
from .released_names import UnmappedKeysError, convert_state_dict
from .swin_names import MMDET, ORIGINAL, convert_swin_state_dict, swin_naming

LAYOUTS = (RELEASED, CODETR, MMDET3, DAB_DETR)


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
        source (str): ``'released'``, ``'codetr'``, ``'mmdet3'`` or
            ``'dab-detr'`` (the last to or from ``'codetr'`` only).
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
    if DAB_DETR in (source, target):
        return _convert_dab_detr(state_dict, source, target)
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


def _convert_dab_detr(state_dict: Mapping[str, torch.Tensor], source: str,
                      target: str) -> 'OrderedDict[str, torch.Tensor]':
    """official DAB-Deformable-DETR <-> codetr (the only pair it has)."""
    if CODETR not in (source, target):
        raise ValueError(
            f'{LAYOUT_NAMES[DAB_DETR]} checkpoints convert to and from '
            f'codetr only, not {LAYOUT_NAMES[source]} -> '
            f'{LAYOUT_NAMES[target]}')
    if source == DAB_DETR:
        return convert_dab_detr_state_dict(state_dict)
    state, unmapped = OrderedDict(), []
    for key, value in state_dict.items():
        if key.endswith('num_batches_tracked'):
            continue  # FrozenBatchNorm2d has no counter
        try:
            name = to_dab_detr(key)
        except UnmappedKeysError:
            unmapped.append(key)
            continue
        state[name] = value
        if name.startswith('bbox_embed.'):  # the decoder's reference
            state['transformer.decoder.' + name] = value
    if unmapped:
        raise UnmappedKeysError(
            f'{len(unmapped)} key(s) have no DAB-Deformable-DETR counterpart '
            '(auxiliary heads and positive-query projections of Co-DETR, or '
            'another query family): ' + ', '.join(unmapped[:10]) +
            (' ...' if len(unmapped) > 10 else ''))
    return state
