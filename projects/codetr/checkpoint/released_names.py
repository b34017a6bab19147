"""Parameter names of the released Co-DETR code (mmdet 2.x) and of codetr.

The authors' code (Sense-X/Co-DETR, mmdet 2.25) names the transformer's
modules the mmcv 1.x way (``attentions.0``, ``ffns.0``, ``level_embeds``,
``enc_output``); codetr reuses mmdet 3.x's Deformable DETR modules, which
name the same tensors ``self_attn``, ``ffn``, ``level_embed``,
``memory_trans_fc``. Everything else (backbone, neck, query-head branches,
auxiliary heads and the Co-DETR projections) has the same name in both.

:func:`to_released` and :func:`from_released` translate one name;
:func:`convert_state_dict` translates a whole state dict and names every key
that does not map. The renames were confirmed against the complete list of
the released model's tensors (``tests/data/parity/official_seed0.json``,
checked by ``tests/parity/test_parity.py``; Co-DINO:
``tests/data/parity/codino/official_codino.json``, checked by
``tests/checkpoint/test_convert_layouts.py`` and
``tests/parity/test_codino_parity.py``).

Co-DINO adds: the transformer's content queries (``query_embedding`` here,
``query_embed`` there), the DINO decoder's ``ref_point_head`` (mmdet's
``MLP`` names its Linears ``layers.0``/``layers.1``, the released
``nn.Sequential`` ``0``/``2``) and output ``norm``, and the denoising label
embedding (owned by mmdet's ``CdnQueryGenerator`` here, by the head
there).
"""
import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Sequence, Tuple

import torch

_IDX = r'(\d+)'
_QT = r'query_head\.transformer\.'

# (codetr pattern, released pattern): prefixes with the same capture groups,
# tried in order; the first whose pattern matches the start of a name wins.
# Identity rules list the module prefixes that keep their names, so that a
# name outside every known module is reported instead of passed through.
RENAMES: Tuple[Tuple[str, str], ...] = (
    (_QT + r'encoder\.layers\.{i}\.self_attn\.',
     _QT + r'encoder\.layers\.{i}\.attentions\.0\.'),
    (_QT + r'encoder\.layers\.{i}\.ffn\.',
     _QT + r'encoder\.layers\.{i}\.ffns\.0\.'),
    (_QT + r'encoder\.layers\.{i}\.norms\.', None),
    (_QT + r'decoder\.layers\.{i}\.self_attn\.',
     _QT + r'decoder\.layers\.{i}\.attentions\.0\.'),
    (_QT + r'decoder\.layers\.{i}\.cross_attn\.',
     _QT + r'decoder\.layers\.{i}\.attentions\.1\.'),
    (_QT + r'decoder\.layers\.{i}\.ffn\.',
     _QT + r'decoder\.layers\.{i}\.ffns\.0\.'),
    (_QT + r'decoder\.layers\.{i}\.norms\.', None),
    (_QT + r'level_embed$', _QT + r'level_embeds$'),
    (_QT + r'memory_trans_fc\.', _QT + r'enc_output\.'),
    (_QT + r'memory_trans_norm\.', _QT + r'enc_output_norm\.'),
    (_QT + r'pos_trans_fc\.', _QT + r'pos_trans\.'),
    (_QT + r'pos_trans_norm\.', None),
    (_QT + r'aux_pos_trans\.', None),
    (_QT + r'aux_pos_trans_norm\.', None),
    (_QT + r'pos_feats_trans\.', None),
    (_QT + r'pos_feats_norm\.', None),
    (_QT + r'head_pos_embed\.', None),
    # Co-DINO: content queries, DINO decoder extras, denoising labels.
    (_QT + r'query_embedding\.', _QT + r'query_embed\.'),
    (_QT + r'decoder\.ref_point_head\.layers\.0\.',
     _QT + r'decoder\.ref_point_head\.0\.'),
    (_QT + r'decoder\.ref_point_head\.layers\.1\.',
     _QT + r'decoder\.ref_point_head\.2\.'),
    (_QT + r'decoder\.norm\.', None),
    (r'query_head\.dn_query_generator\.label_embedding\.',
     r'query_head\.label_embedding\.'),
    (r'query_head\.cls_branches\.', None),
    (r'query_head\.reg_branches\.', None),
    (r'query_head\.query_embedding\.', None),
    (r'query_head\.downsample\.', None),
    (r'backbone\.', None),
    (r'neck\.', None),
    (r'rpn_head\.', None),
    (r'roi_head\.', None),
    (r'bbox_head\.', None),
)


def _compile(pattern: str) -> Tuple['re.Pattern', str]:
    """Pattern with ``{i}`` groups -> (regex, replacement template)."""
    regex = re.compile(pattern.replace('{i}', _IDX))
    template, group = pattern, 0
    while '{i}' in template:
        group += 1
        template = template.replace('{i}', f'\\g<{group}>', 1)
    # the template is a literal: drop the regex escapes and anchors
    template = template.replace('\\.', '.').rstrip('$')
    return regex, template


def _build(reverse: bool) -> List[Tuple['re.Pattern', str]]:
    rules = []
    for ours, released in RENAMES:
        released = released or ours
        src, dst = (released, ours) if reverse else (ours, released)
        regex, _ = _compile(src)
        _, template = _compile(dst)
        rules.append((regex, template))
    return rules


_TO_RELEASED = _build(reverse=False)
_FROM_RELEASED = _build(reverse=True)


class UnmappedKeysError(KeyError):
    """Raised when state-dict keys belong to no known module."""

    def __str__(self) -> str:  # KeyError would print the repr
        return str(self.args[0])


def _translate(name: str, rules: Sequence) -> str:
    for regex, template in rules:
        match = regex.match(name)
        if match:
            return match.expand(template) + name[match.end():]
    raise UnmappedKeysError(name)


def to_released(name: str) -> str:
    """codetr parameter name -> the released code's name.

    Raises:
        UnmappedKeysError: The name belongs to no module of Co-DETR.
    """
    return _translate(name, _TO_RELEASED)


def from_released(name: str) -> str:
    """The released code's parameter name -> codetr's name.

    Raises:
        UnmappedKeysError: The name belongs to no module of Co-DETR.
    """
    return _translate(name, _FROM_RELEASED)


def convert_state_dict(state_dict: Mapping[str, torch.Tensor],
                       to: str = 'codetr') -> 'OrderedDict[str, torch.Tensor]':
    """Rename every key of a state dict to the other layout.

    Args:
        state_dict (Mapping[str, Tensor]): Tensors by name, in the layout
            opposite to ``to``.
        to (str): ``'codetr'`` (released -> codetr) or ``'released'``
            (codetr -> released).

    Returns:
        OrderedDict[str, Tensor]: The same tensors (not copied) by new name,
        in the original order.

    Raises:
        UnmappedKeysError: Listing every key that maps to nothing, and every
            pair of keys that would map to the same name.
        ValueError: ``to`` is neither layout.
    """
    if to not in ('codetr', 'released'):
        raise ValueError(f"to must be 'codetr' or 'released', got {to!r}")
    rules = _FROM_RELEASED if to == 'codetr' else _TO_RELEASED
    converted: Dict[str, torch.Tensor] = OrderedDict()
    sources: Dict[str, str] = {}
    unmapped, clashes = [], []
    for key, value in state_dict.items():
        try:
            new_key = _translate(key, rules)
        except UnmappedKeysError:
            unmapped.append(key)
            continue
        if new_key in sources:
            clashes.append(f'{sources[new_key]!r} and {key!r} -> {new_key!r}')
        sources[new_key] = key
        converted[new_key] = value
    if unmapped or clashes:
        source = 'released (mmdet 2.x)' if to == 'codetr' else 'codetr'
        lines = [
            f'cannot convert this {source} state dict to the {to} '
            'layout:'
        ]
        if unmapped:
            lines.append(f'{len(unmapped)} key(s) belong to no Co-DETR '
                         'module: ' + ', '.join(unmapped[:20]) +
                         (' ...' if len(unmapped) > 20 else ''))
        if clashes:
            lines.append('keys that map to the same name: ' +
                         '; '.join(clashes))
        lines.append('Is this a Co-DETR checkpoint of the '
                     f"{'released' if to == 'codetr' else 'codetr'} code?")
        raise UnmappedKeysError('\n'.join(lines))
    return converted
