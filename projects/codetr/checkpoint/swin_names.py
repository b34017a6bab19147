"""Swin Transformer tensors: the original layout and mmdet 3.x's.

The released Co-DETR code (and Microsoft's Swin repositories) build Swin from
``SwinTransformerV1`` (``projects/models/swin_transformer.py``); codetr and
mmdet 3.x's ``projects/CO-DETR`` use mmdet's ``SwinTransformer``. The two hold
the same tensors under other names::

    original (released)                    mmdet 3.x
    patch_embed.proj.*                     patch_embed.projection.*
    layers.i.blocks.j.attn.*               stages.i.blocks.j.attn.w_msa.*
      (qkv, proj, relative_position_bias_table, relative_position_index)
    layers.i.blocks.j.mlp.fc1.*            stages.i.blocks.j.ffn.layers.0.0.*
    layers.i.blocks.j.mlp.fc2.*            stages.i.blocks.j.ffn.layers.1.*
    layers.i.blocks.j.norm1/norm2.*        stages.i.blocks.j.norm1/norm2.*
    layers.i.downsample.reduction/norm.*   stages.i.downsample.reduction/norm.*
    patch_embed.norm.*, norm{k}.*          (same)

Patch merging also orders its ``4 * C`` input features differently. The
original concatenates the four neighbours of a 2x2 cell whole, in the order
(row 0, col 0), (row 1, col 0), (row 0, col 1), (row 1, col 1): feature
``p * C + c`` is channel ``c`` of neighbour ``p``. mmdet gathers them with
``nn.Unfold``, channel by channel, each channel's neighbours row-major:
feature ``4 * c + q`` with ``q = 2 * row + col``. The merge's LayerNorm
(weight, bias) and its reduction's input columns are permuted accordingly
(:func:`merge_to_unfold`, :func:`unfold_to_merge`); every other tensor is
unchanged. ``relative_position_index`` is a persistent buffer in both and is
carried over (the two compute the same index).
"""
import re
from collections import OrderedDict
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import torch

from .released_names import UnmappedKeysError

ORIGINAL = 'original'
MMDET = 'mmdet'
SWIN_NAMINGS = (ORIGINAL, MMDET)

# Position of each unfold neighbour q = (0,0), (0,1), (1,0), (1,1) among the
# original's concatenation (0,0), (1,0), (0,1), (1,1); the permutation swaps
# the two middle ones, so it is its own inverse.
_MERGE_ORDER_OF_UNFOLD = (0, 2, 1, 3)

_I = r'(\d+)'
_B = r'(\d+)'
_WB = r'(weight|bias)'
_ATTN = (r'(qkv\.weight|qkv\.bias|proj\.weight|proj\.bias|'
         r'relative_position_bias_table|relative_position_index)')
# (original module, mmdet module, tensors of that module, needs the
# patch-merging permutation). Modules match a name after the backbone
# prefix; {i}/{b} are the stage and block indices, in the same order on both
# sides. Listing the tensors makes a stray key an error, not a pass-through.
_RULES: Tuple[Tuple[str, str, str, bool], ...] = (
    (r'patch_embed\.proj\.', r'patch_embed\.projection\.', _WB, False),
    (r'patch_embed\.norm\.', r'patch_embed\.norm\.', _WB, False),
    (r'layers\.{i}\.blocks\.{b}\.attn\.',
     r'stages\.{i}\.blocks\.{b}\.attn\.w_msa\.', _ATTN, False),
    (r'layers\.{i}\.blocks\.{b}\.mlp\.fc1\.',
     r'stages\.{i}\.blocks\.{b}\.ffn\.layers\.0\.0\.', _WB, False),
    (r'layers\.{i}\.blocks\.{b}\.mlp\.fc2\.',
     r'stages\.{i}\.blocks\.{b}\.ffn\.layers\.1\.', _WB, False),
    (r'layers\.{i}\.blocks\.{b}\.norm1\.',
     r'stages\.{i}\.blocks\.{b}\.norm1\.', _WB, False),
    (r'layers\.{i}\.blocks\.{b}\.norm2\.',
     r'stages\.{i}\.blocks\.{b}\.norm2\.', _WB, False),
    # bias-free in both
    (r'layers\.{i}\.downsample\.reduction\.',
     r'stages\.{i}\.downsample\.reduction\.', r'weight', True),
    (r'layers\.{i}\.downsample\.norm\.', r'stages\.{i}\.downsample\.norm\.',
     _WB, True),
    (r'norm{i}\.', r'norm{i}\.', _WB, False),
)


class UnmappedSwinKeysError(UnmappedKeysError):
    """Backbone keys that belong to no Swin module of the named layout."""


def merge_to_unfold(tensor: torch.Tensor) -> torch.Tensor:
    """Reorder the last dimension (``4 * C``) from the original patch-merging
    concatenation to mmdet's ``nn.Unfold`` order.

    Args:
        tensor (Tensor): The merge's norm weight/bias ``(4C,)`` or its
            reduction weight ``(out, 4C)``.

    Returns:
        Tensor: A new tensor of the same shape.
    """
    *lead, width = tensor.shape
    if width % 4:
        raise ValueError(f'patch-merging width {width} is not 4 * C')
    neighbours = tensor.reshape(*lead, 4, width // 4)
    neighbours = neighbours[..., _MERGE_ORDER_OF_UNFOLD, :]
    return neighbours.transpose(-1, -2).reshape(*lead, width).contiguous()


def unfold_to_merge(tensor: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`merge_to_unfold`: mmdet's order -> the original's."""
    *lead, width = tensor.shape
    if width % 4:
        raise ValueError(f'patch-merging width {width} is not 4 * C')
    neighbours = tensor.reshape(*lead, width // 4, 4).transpose(-1, -2)
    neighbours = neighbours[..., _MERGE_ORDER_OF_UNFOLD, :]
    return neighbours.reshape(*lead, width).contiguous()


def _compile(pattern: str) -> Tuple['re.Pattern', str]:
    """Pattern with ``{i}``/``{b}`` -> (regex, replacement template)."""
    regex = re.compile(pattern.replace('{i}', _I).replace('{b}', _B))
    template, group = pattern, 0
    for token in sorted(('{i}', '{b}'), key=pattern.find):
        if token in template:
            group += 1
            template = template.replace(token, f'\\g<{group}>')
    return regex, template.replace('\\.', '.')


_Rule = Tuple['re.Pattern', str, 're.Pattern', Optional[Callable]]


def _build(to: str) -> List[_Rule]:
    rules = []
    for original, mmdet, tensors, permute in _RULES:
        src, dst = (original, mmdet) if to == MMDET else (mmdet, original)
        transform = None
        if permute:
            transform = merge_to_unfold if to == MMDET else unfold_to_merge
        rules.append((_compile(src)[0], _compile(dst)[1],
                      re.compile(tensors), transform))
    return rules


_RULES_BY_TARGET: Dict[str, List[_Rule]] = {
    target: _build(target)
    for target in SWIN_NAMINGS
}


def _check_target(to: str) -> None:
    if to not in SWIN_NAMINGS:
        raise ValueError(f'to must be one of {SWIN_NAMINGS}, got {to!r}')


def _match(name: str, to: str) -> Optional[Tuple[str, Optional[Callable]]]:
    for regex, template, tensors, transform in _RULES_BY_TARGET[to]:
        match = regex.match(name)
        if match:
            rest = name[match.end():]
            if not tensors.fullmatch(rest):
                return None
            return match.expand(template) + rest, transform
    return None


def convert_name(name: str, to: str = MMDET) -> str:
    """Rename one Swin tensor (without the ``backbone.`` prefix).

    Args:
        name (str): e.g. ``'layers.0.blocks.1.attn.qkv.weight'``.
        to (str): ``'mmdet'`` or ``'original'``.

    Raises:
        UnmappedSwinKeysError: No Swin module of the other layout has it.
    """
    _check_target(to)
    found = _match(name, to)
    if found is None:
        raise UnmappedSwinKeysError(name)
    return found[0]


def swin_naming(keys: Iterable[str], prefix: str = 'backbone.') -> str:
    """Which Swin naming the keys under ``prefix`` use.

    Returns:
        str: ``'original'`` (``layers.N.blocks``), ``'mmdet'``
        (``stages.N.blocks``), or ``''`` when there is no Swin block (e.g. a
        ResNet backbone) or both namings appear.
    """
    found = set()
    for key in keys:
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        if re.match(r'layers\.\d+\.blocks\.', rest):
            found.add(ORIGINAL)
        elif re.match(r'stages\.\d+\.blocks\.', rest):
            found.add(MMDET)
    return found.pop() if len(found) == 1 else ''


def convert_swin_state_dict(
        state_dict: Mapping[str, torch.Tensor],
        to: str = MMDET,
        prefix: str = 'backbone.') -> 'OrderedDict[str, torch.Tensor]':
    """Convert the Swin tensors under ``prefix``; keep every other key.

    Args:
        state_dict (Mapping[str, Tensor]): A whole detector's (or a bare
            backbone's, with ``prefix=''``) state dict.
        to (str): ``'mmdet'`` (original -> mmdet) or ``'original'``.
        prefix (str): Where the backbone's tensors start.

    Returns:
        OrderedDict[str, Tensor]: Renamed tensors, in the original order;
        patch-merging tensors are new (permuted) tensors, the others the
        same objects.

    Raises:
        UnmappedSwinKeysError: Listing every key under ``prefix`` that is no
            tensor of a Swin in the source layout (e.g. an absolute position
            embedding, which no released config uses).
    """
    _check_target(to)
    source = ORIGINAL if to == MMDET else MMDET
    converted: Dict[str, torch.Tensor] = OrderedDict()
    unmapped = []
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            converted[key] = value
            continue
        found = _match(key[len(prefix):], to)
        if found is None:
            unmapped.append(key)
            continue
        name, transform = found
        converted[prefix + name] = transform(value) if transform else value
    if unmapped:
        raise UnmappedSwinKeysError(
            f'cannot convert the Swin backbone from the {source} to the {to} '
            f'naming: {len(unmapped)} key(s) are no tensor of a {source} '
            f'Swin Transformer: ' + ', '.join(unmapped[:20]) +
            (' ...' if len(unmapped) > 20 else ''))
    return converted
