"""Parameter names of mmdet 3.x's ``projects/CO-DETR`` and of the released
Co-DETR code (mmdet 2.x).

mmdet 3.x ported the authors' Co-DINO by keeping their modules: the
transformer is still built from mmcv's ``BaseTransformerLayer``
(``attentions.0``, ``ffns.0``, ``level_embeds``, ``enc_output``), and the
detector, neck and auxiliary heads have the released names. Two things
differ in its checkpoints:

- the denoising label embedding belongs to mmdet's ``CdnQueryGenerator``:
  ``query_head.dn_generator.label_embedding`` there,
  ``query_head.label_embedding`` in the released code (same shape,
  ``(num_classes, embed_dims)``);
- Swin backbones are mmdet's ``SwinTransformer`` (``stages.N``,
  ``attn.w_msa``, ``ffn.layers``, unfold-ordered patch merging), where the
  released code has the original Swin (``layers.N``, ``attn``, ``mlp``);
  :mod:`.swin_names` converts those.

:func:`to_released` / :func:`from_released` translate a state dict; the
chain to codetr goes through the released layout
(``released_names.convert_state_dict``).
"""
from collections import OrderedDict
from typing import Dict, Iterable, Mapping, Tuple

import torch

from .released_names import UnmappedKeysError
from .swin_names import MMDET, ORIGINAL, convert_swin_state_dict, swin_naming

# (mmdet 3.x prefix, released prefix).
RENAMES: Tuple[Tuple[str, str], ...] = (
    ('query_head.dn_generator.label_embedding.',
     'query_head.label_embedding.'),
)
# Top-level modules of the Co-DETR detector, alike in both codebases; a key
# outside them is named in the error instead of passed through.
MODULES = ('backbone.', 'neck.', 'query_head.', 'rpn_head.', 'roi_head.',
           'bbox_head.')
# Keys that only mmdet 3.x's Co-DETR writes.
_MARKERS = ('query_head.dn_generator.', )


def has_mmdet3_markers(keys: Iterable[str]) -> bool:
    """Whether some key exists only in mmdet 3.x ``projects/CO-DETR``
    checkpoints (the denoising generator's label embedding)."""
    return any(key.startswith(_MARKERS) for key in keys)


def _rename(state_dict: Mapping[str, torch.Tensor],
            pairs: Tuple[Tuple[str, str], ...],
            target: str) -> 'OrderedDict[str, torch.Tensor]':
    converted: Dict[str, torch.Tensor] = OrderedDict()
    sources: Dict[str, str] = {}
    unmapped, clashes = [], []
    for key, value in state_dict.items():
        if not key.startswith(MODULES):
            unmapped.append(key)
            continue
        new_key = key
        for src, dst in pairs:
            if key.startswith(src):
                new_key = dst + key[len(src):]
                break
        if new_key in sources:
            clashes.append(f'{sources[new_key]!r} and {key!r} -> {new_key!r}')
        sources[new_key] = key
        converted[new_key] = value
    if unmapped or clashes:
        lines = [f'cannot convert this state dict to the {target} layout:']
        if unmapped:
            lines.append(f'{len(unmapped)} key(s) belong to no Co-DETR '
                         'module: ' + ', '.join(unmapped[:20]) +
                         (' ...' if len(unmapped) > 20 else ''))
        if clashes:
            lines.append('keys that map to the same name: ' +
                         '; '.join(clashes))
        raise UnmappedKeysError('\n'.join(lines))
    return converted


def to_released(
    state_dict: Mapping[str, torch.Tensor]
) -> 'OrderedDict[str, torch.Tensor]':
    """mmdet 3.x ``projects/CO-DETR`` state dict -> the released names.

    Args:
        state_dict (Mapping[str, Tensor]): Tensors by mmdet 3.x name.

    Returns:
        OrderedDict[str, Tensor]: By released name, in the original order; a
        Swin backbone in the original Swin naming.

    Raises:
        UnmappedKeysError: Keys outside the detector's modules, or keys
            that would get the same name.
        UnmappedSwinKeysError: Backbone keys that are no mmdet Swin tensor
            (only checked when the backbone is an mmdet Swin).
    """
    renamed = _rename(state_dict, RENAMES, 'released Co-DETR (mmdet 2.x)')
    if swin_naming(renamed) == MMDET:
        renamed = convert_swin_state_dict(renamed, to=ORIGINAL)
    return renamed


def from_released(
    state_dict: Mapping[str, torch.Tensor]
) -> 'OrderedDict[str, torch.Tensor]':
    """Released state dict -> mmdet 3.x ``projects/CO-DETR`` names.

    The inverse of :func:`to_released`; raises the same errors.
    """
    inverse = tuple((dst, src) for src, dst in RENAMES)
    renamed = _rename(state_dict, inverse, 'mmdet 3.x projects/CO-DETR')
    if swin_naming(renamed) == ORIGINAL:
        renamed = convert_swin_state_dict(renamed, to=MMDET)
    return renamed
