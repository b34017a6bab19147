"""Parameter names of the official DAB-Deformable-DETR code and of codetr.

IDEA-Research/DAB-DETR (``models/dab_deformable_detr``) builds its model
from plain PyTorch modules: a torchvision ResNet under ``backbone.0.body``,
the input projections ``input_proj.{i}`` (conv + GroupNorm, the last one
the extra stride-2 level), the transformer with ``linear1``/``norm1``-style
layers and ``nn.MultiheadAttention`` self-attention, the query embeddings
``tgt_embed``/``refpoint_embed`` and the branches ``class_embed.{i}`` /
``bbox_embed.{i}.layers.{j}``. codetr's DAB-Deformable-DETR (configs
``dab_deformable_detr_r50_50e_coco.py``,
``co_dab_deformable_detr_r50_1x_coco.py``) holds the same tensors in
mmdet's modules (ResNet, ``ChannelMapper``, the Deformable DETR layers,
``DeformableDETRHead`` branches); this module translates the names. The
mapping was confirmed against the complete list of the official model's
tensors (``tests/data/parity/dab/``, checked by
``tests/parity/test_dab_parity.py``).

Two things are more than a rename:

- With box refinement the official decoder holds the model's own
  ``bbox_embed`` (``transformer.decoder.bbox_embed`` is the same module), so
  official checkpoints store every branch twice; the copy is dropped after
  checking that it equals the original.
- Official COCO checkpoints classify 91 category ids (``class_embed``
  has 91 outputs, index = COCO category id); mmdet's ``CocoDataset``
  numbers the 80 categories 0..79. A 91-output classifier is reduced to the
  rows of the 80 category ids, in mmdet's order.
"""
from collections import OrderedDict
from typing import Dict, Mapping, Tuple

import torch

from .released_names import UnmappedKeysError, _compile, _translate

_T = r'query_head\.transformer\.'
_ENC = _T + r'encoder\.layers\.{i}\.'
_DEC = _T + r'decoder\.layers\.{i}\.'
_OENC = r'transformer\.encoder\.layers\.{i}\.'
_ODEC = r'transformer\.decoder\.layers\.{i}\.'

# (codetr pattern, official pattern), tried in order; the first whose
# pattern matches the start of a name wins (patterns as in released_names).
RENAMES: Tuple[Tuple[str, str], ...] = (
    (r'backbone\.', r'backbone\.0\.body\.'),
    # the extra level after the 3 backbone levels (4-level models), before
    # the general rule that would take it for a fourth backbone level
    (r'neck\.extra_convs\.0\.conv\.', r'input_proj\.3\.0\.'),
    (r'neck\.extra_convs\.0\.gn\.', r'input_proj\.3\.1\.'),
    (r'neck\.convs\.{i}\.conv\.', r'input_proj\.{i}\.0\.'),
    (r'neck\.convs\.{i}\.gn\.', r'input_proj\.{i}\.1\.'),
    (_T + r'level_embed$', r'transformer\.level_embed$'),
    (_ENC + r'self_attn\.', _OENC + r'self_attn\.'),
    (_ENC + r'ffn\.layers\.0\.0\.', _OENC + r'linear1\.'),
    (_ENC + r'ffn\.layers\.1\.', _OENC + r'linear2\.'),
    (_ENC + r'norms\.0\.', _OENC + r'norm1\.'),
    (_ENC + r'norms\.1\.', _OENC + r'norm2\.'),
    (_DEC + r'self_attn\.attn\.', _ODEC + r'self_attn\.'),
    (_DEC + r'cross_attn\.', _ODEC + r'cross_attn\.'),
    (_DEC + r'ffn\.layers\.0\.0\.', _ODEC + r'linear1\.'),
    (_DEC + r'ffn\.layers\.1\.', _ODEC + r'linear2\.'),
    # mmdet's layer: norms after self-attention, cross-attention, FFN;
    # the official layer names them norm2, norm1, norm3
    (_DEC + r'norms\.0\.', _ODEC + r'norm2\.'),
    (_DEC + r'norms\.1\.', _ODEC + r'norm1\.'),
    (_DEC + r'norms\.2\.', _ODEC + r'norm3\.'),
    (_T + r'decoder\.query_scale\.', r'transformer\.decoder\.query_scale\.'),
    (_T + r'decoder\.ref_point_head\.',
     r'transformer\.decoder\.ref_point_head\.'),
    (_T + r'tgt_embed\.', r'tgt_embed\.'),
    (_T + r'refpoint_embed\.', r'refpoint_embed\.'),
    (r'query_head\.cls_branches\.', r'class_embed\.'),
    # mmdet's reg branch is Linear, ReLU, Linear, ReLU, Linear
    (r'query_head\.reg_branches\.{i}\.0\.', r'bbox_embed\.{i}\.layers\.0\.'),
    (r'query_head\.reg_branches\.{i}\.2\.', r'bbox_embed\.{i}\.layers\.1\.'),
    (r'query_head\.reg_branches\.{i}\.4\.', r'bbox_embed\.{i}\.layers\.2\.'),
)
# the official decoder's reference to the model's box branches
_DECODER_COPY = 'transformer.decoder.bbox_embed.'
# Keys only the official code writes (the layout's markers).
_MARKERS = ('refpoint_embed.', 'tgt_embed.', 'transformer.decoder.')


def _build(reverse: bool):
    rules = []
    for ours, official in RENAMES:
        src, dst = (official, ours) if reverse else (ours, official)
        rules.append((_compile(src)[0], _compile(dst)[1]))
    return rules


_TO_OFFICIAL = _build(reverse=False)
_FROM_OFFICIAL = _build(reverse=True)

# COCO category ids in mmdet's CocoDataset order (label 0..79): the rows of
# a 91-output official classifier.
COCO_CATEGORY_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17,
                     18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
                     35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49,
                     50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
                     64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81,
                     82, 84, 85, 86, 87, 88, 89, 90)


def to_dab_detr(name: str) -> str:
    """codetr parameter name -> the official DAB-Deformable-DETR name.

    Raises:
        UnmappedKeysError: The name has no official counterpart (e.g. an
            auxiliary head of Co-DETR).
    """
    return _translate(name, _TO_OFFICIAL)


def from_dab_detr(name: str) -> str:
    """The official DAB-Deformable-DETR name -> codetr's name.

    Raises:
        UnmappedKeysError: The name belongs to no module codetr knows.
    """
    return _translate(name, _FROM_OFFICIAL)


def has_dab_detr_markers(keys) -> bool:
    """Whether the keys are those of an official DAB-Deformable-DETR model
    (its query embeddings or decoder at the top level)."""
    return any(key.startswith(_MARKERS) for key in keys)


def convert_dab_detr_state_dict(
        state_dict: Mapping[str, torch.Tensor]
) -> 'OrderedDict[str, torch.Tensor]':
    """An official DAB-Deformable-DETR state dict in codetr's names.

    The decoder's copy of the box branches is dropped (after checking it
    equals the original) and a 91-output COCO classifier is reduced to
    mmdet's 80 classes; FrozenBatchNorm buffers map to mmdet's BatchNorm,
    with the ``num_batches_tracked`` counter it adds set to 0.

    Raises:
        UnmappedKeysError: Listing every key of no known module (e.g. a
            two-stage or multi-pattern model, which codetr does not build).
    """
    converted: Dict[str, torch.Tensor] = OrderedDict()
    unmapped, mismatched = [], []
    for key, value in state_dict.items():
        if key.startswith(_DECODER_COPY):
            original = state_dict.get(key[len('transformer.decoder.'):])
            if original is None or not torch.equal(original, value):
                mismatched.append(key)
            continue
        try:
            new_key = from_dab_detr(key)
        except UnmappedKeysError:
            unmapped.append(key)
            continue
        if new_key.startswith('query_head.cls_branches.') and \
                value.size(0) == 91:
            value = value[list(COCO_CATEGORY_IDS)]
        converted[new_key] = value
        if new_key.startswith('backbone.') and \
                new_key.endswith('.running_mean'):
            # FrozenBatchNorm2d has no counter; mmdet's BatchNorm does
            converted[new_key[:-len('running_mean')] +
                      'num_batches_tracked'] = torch.tensor(0)
    if unmapped or mismatched:
        lines = ['cannot convert this DAB-Deformable-DETR state dict:']
        if unmapped:
            lines.append(f'{len(unmapped)} key(s) belong to no module of '
                         'codetr\'s DAB-Deformable-DETR (only the one-stage, '
                         'box-refining, pattern-free model is supported): ' +
                         ', '.join(unmapped[:20]) +
                         (' ...' if len(unmapped) > 20 else ''))
        if mismatched:
            lines.append('decoder copies that differ from the model\'s box '
                         'branches: ' + ', '.join(mismatched[:5]))
        raise UnmappedKeysError('\n'.join(lines))
    return converted
