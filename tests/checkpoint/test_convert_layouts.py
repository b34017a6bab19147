"""Swin backbones and mmdet 3.x ``projects/CO-DETR`` checkpoints in the
converter (``checkpoint/swin_names.py``, ``mmdet3_names.py``,
``conversion.py``; the released <-> codetr transformer names are tested in
``test_convert_checkpoint.py``).

The patch-merging reorder is checked against a per-element reimplementation
of the original Swin's merge (concatenate the 2x2 neighbours, LayerNorm,
linear), fed the released-layout weights, against mmdet's ``PatchMerging``
fed the converted ones. Names are pinned by hand-written pairs and by the
complete key list of the original Swin, written from its module structure.
"""
import os.path as osp
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from codetr_testing import REPO_ROOT, build_model
from mmdet.models.layers import PatchMerging
from test_convert_checkpoint import (HINT, convert, save_released,
                                     strict_load_equals)
from zoo_testing import TINY_SWIN, tiny_zoo_model_cfg

from projects.codetr.checkpoint import (CODETR, MMDET3, RELEASED,
                                        ReleasedCheckpointError,
                                        UnmappedKeysError, check_load_from,
                                        convert_layout,
                                        convert_swin_state_dict, detect_layout,
                                        merge_to_unfold, mmdet3_names,
                                        swin_naming, unfold_to_merge)
from projects.codetr.checkpoint.swin_names import convert_name

SWIN_CONFIG = 'configs/co_deformable_detr_swin_tiny_1x_coco.py'
CO_DINO_CONFIG = 'configs/co_dino_5scale_r50_1x_coco.py'
_Q = 'query_head.transformer.'

# original Swin name -> mmdet name, one per kind of tensor, from the two
# module definitions (not derived from swin_names.py).
KNOWN_SWIN_RENAMES = {
    'patch_embed.proj.weight': 'patch_embed.projection.weight',
    'patch_embed.norm.bias': 'patch_embed.norm.bias',
    'layers.2.blocks.5.attn.qkv.weight':
    'stages.2.blocks.5.attn.w_msa.qkv.weight',
    'layers.2.blocks.5.attn.proj.bias':
    'stages.2.blocks.5.attn.w_msa.proj.bias',
    'layers.0.blocks.1.attn.relative_position_bias_table':
    'stages.0.blocks.1.attn.w_msa.relative_position_bias_table',
    'layers.0.blocks.1.attn.relative_position_index':
    'stages.0.blocks.1.attn.w_msa.relative_position_index',
    'layers.1.blocks.0.mlp.fc1.weight':
    'stages.1.blocks.0.ffn.layers.0.0.weight',
    'layers.1.blocks.0.mlp.fc2.bias': 'stages.1.blocks.0.ffn.layers.1.bias',
    'layers.3.blocks.1.norm1.weight': 'stages.3.blocks.1.norm1.weight',
    'layers.3.blocks.1.norm2.bias': 'stages.3.blocks.1.norm2.bias',
    'layers.2.downsample.reduction.weight':
    'stages.2.downsample.reduction.weight',
    'layers.2.downsample.norm.weight': 'stages.2.downsample.norm.weight',
    'norm3.weight': 'norm3.weight',
}


def original_swin_keys(depths, out_indices=(1, 2, 3)):
    """Every state-dict key of the released ``SwinTransformerV1``
    (patch_norm, no absolute position embedding), from its structure."""
    keys = [f'patch_embed.{m}.{p}' for m in ('proj', 'norm')
            for p in ('weight', 'bias')]
    for i, depth in enumerate(depths):
        for b in range(depth):
            block = f'layers.{i}.blocks.{b}.'
            keys += [block + 'norm1.weight', block + 'norm1.bias',
                     block + 'attn.relative_position_bias_table',
                     block + 'attn.relative_position_index']
            keys += [f'{block}{m}.{p}' for m in ('attn.qkv', 'attn.proj',
                                                 'norm2', 'mlp.fc1',
                                                 'mlp.fc2')
                     for p in ('weight', 'bias')]
        if i < len(depths) - 1:
            keys += [f'layers.{i}.downsample.reduction.weight',
                     f'layers.{i}.downsample.norm.weight',
                     f'layers.{i}.downsample.norm.bias']
    keys += [f'norm{i}.{p}' for i in out_indices for p in ('weight', 'bias')]
    return keys


def reference_patch_merging(x, hw, norm_weight, norm_bias, reduction):
    """The original Swin's patch merging, one output cell at a time.

    Odd sides are zero-padded at the bottom/right; each cell concatenates
    its neighbours (row 0, col 0), (row 1, col 0), (row 0, col 1),
    (row 1, col 1), whole; then LayerNorm over 4C and a bias-free linear.
    """
    batch, _, channels = x.shape
    height, width = hw
    grid = F.pad(x.view(batch, height, width, channels),
                 (0, 0, 0, width % 2, 0, height % 2))
    out_h, out_w = (height + 1) // 2, (width + 1) // 2
    out = x.new_empty(batch, out_h * out_w, reduction.shape[0])
    for i in range(out_h):
        for j in range(out_w):
            cell = torch.cat([
                grid[:, 2 * i + row, 2 * j + col]
                for col in (0, 1) for row in (0, 1)
            ], -1)
            cell = F.layer_norm(cell, (4 * channels, ), norm_weight,
                                norm_bias)
            out[:, i * out_w + j] = cell @ reduction.t()
    return out


@pytest.mark.parametrize('hw', [(4, 6), (5, 3)])
def test_patch_merging_reorder_matches_original_merge(hw):
    gen = torch.Generator().manual_seed(0)
    channels = 6
    released = OrderedDict(
        (f'layers.1.downsample.{k}', torch.randn(*shape, generator=gen))
        for k, shape in (('reduction.weight', (2 * channels, 4 * channels)),
                         ('norm.weight', (4 * channels, )),
                         ('norm.bias', (4 * channels, ))))
    x = torch.randn(2, hw[0] * hw[1], channels, generator=gen)
    expected = reference_patch_merging(
        x, hw, released['layers.1.downsample.norm.weight'],
        released['layers.1.downsample.norm.bias'],
        released['layers.1.downsample.reduction.weight'])

    merge = PatchMerging(
        channels, 2 * channels, stride=2, norm_cfg=dict(type='LN'))
    converted = convert_swin_state_dict(released, to='mmdet', prefix='')
    prefix = 'stages.1.downsample.'
    merge.load_state_dict(
        {k[len(prefix):]: v for k, v in converted.items()}, strict=True)
    with torch.no_grad():
        out, out_hw = merge(x, hw)
    assert out_hw == ((hw[0] + 1) // 2, (hw[1] + 1) // 2)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # without the reorder (names only) the merge differs: the test can fail
    unordered = PatchMerging(
        channels, 2 * channels, stride=2, norm_cfg=dict(type='LN'))
    unordered.load_state_dict(
        {k.split('downsample.')[1]: v for k, v in released.items()})
    with torch.no_grad():
        assert not torch.allclose(unordered(x, hw)[0], expected, atol=1e-3)
    back = convert_swin_state_dict(converted, to='original', prefix='')
    for key, tensor in released.items():
        assert torch.equal(back[key], tensor), key


def test_merge_permutation_round_trip_and_order():
    # feature p * C + c of the original is channel c of neighbour p
    channels = 3
    original = torch.arange(4 * channels)
    unfold = merge_to_unfold(original)
    # mmdet's feature 4 * c + q is channel c of neighbour q (row-major)
    row_major_to_original = {0: 0, 1: 2, 2: 1, 3: 3}
    for c in range(channels):
        for q in range(4):
            p = row_major_to_original[q]
            assert unfold[4 * c + q] == original[p * channels + c]
    assert torch.equal(unfold_to_merge(unfold), original)
    weight = torch.randn(5, 4 * channels)
    assert torch.equal(unfold_to_merge(merge_to_unfold(weight)), weight)


def test_swin_names_pinned_and_complete():
    for original, mmdet in KNOWN_SWIN_RENAMES.items():
        assert convert_name(original, to='mmdet') == mmdet
        assert convert_name(mmdet, to='original') == original
    # the whole key list of mmdet's Swin maps onto the original Swin's
    model = build_model(tiny_zoo_model_cfg(SWIN_CONFIG))
    mmdet_keys = list(model.backbone.state_dict())
    converted = [convert_name(k, to='original') for k in mmdet_keys]
    assert sorted(converted) == sorted(original_swin_keys(
        TINY_SWIN['depths']))
    with pytest.raises(UnmappedKeysError, match='absolute_pos_embed'):
        convert_swin_state_dict({'backbone.absolute_pos_embed': 0},
                                to='mmdet')


def test_swin_conversion_agrees_with_mmdet_converter():
    """mmdet's own loader for original Swin weights (``swin_converter``,
    used by ``SwinTransformer(convert_weights=True)``) as an oracle."""
    from mmdet.models.backbones.swin import swin_converter
    model = build_model(tiny_zoo_model_cfg(SWIN_CONFIG), seed=1)
    ours = {k: v for k, v in model.state_dict().items()
            if k.startswith('backbone.')}
    original = convert_swin_state_dict(ours, to='original')
    bare = OrderedDict((k[len('backbone.'):], v) for k, v in original.items())
    theirs = swin_converter(bare)
    assert list(theirs) == list(ours)
    for key, tensor in ours.items():
        assert torch.equal(theirs[key], tensor), key


def test_relative_position_index_is_the_original_swins():
    """The buffer is carried over unchanged: mmdet computes the index the
    original way (row offset * (2W - 1) + column offset, both shifted)."""
    window = TINY_SWIN['window_size']
    rows, cols = torch.meshgrid(
        torch.arange(window), torch.arange(window), indexing='ij')
    coords = torch.stack([rows.flatten(), cols.flatten()])  # 2, W*W
    rel = (coords[:, :, None] - coords[:, None, :]) + (window - 1)
    index = rel[0] * (2 * window - 1) + rel[1]
    model = build_model(tiny_zoo_model_cfg(SWIN_CONFIG))
    buffer = model.backbone.stages[1].blocks[0].attn.w_msa
    assert torch.equal(buffer.relative_position_index, index)


@pytest.fixture(scope='module')
def swin_model():
    """Tiny Swin Co-Deformable-DETR and its codetr state dict."""
    model = build_model(tiny_zoo_model_cfg(SWIN_CONFIG), seed=5)
    return model, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize('layout', [RELEASED, MMDET3])
def test_swin_checkpoint_converts_to_codetr(layout, swin_model, tmp_path,
                                            monkeypatch):
    model, expected = swin_model
    foreign = convert_layout(expected, CODETR, layout)
    naming = 'original' if layout == RELEASED else 'mmdet'
    assert swin_naming(foreign) == naming
    assert _Q + 'encoder.layers.0.attentions.0.value_proj.weight' in foreign
    assert detect_layout(foreign) == layout
    src = save_released(tmp_path / 'in.pth', foreign)
    with pytest.raises(ReleasedCheckpointError) as err:
        check_load_from(src)
    assert f'{HINT} {src} ' in str(err.value)
    assert convert(src, tmp_path / 'out.pth', monkeypatch=monkeypatch) is None
    saved = torch.load(tmp_path / 'out.pth', weights_only=True)
    assert saved['meta']['source_layout'] == layout
    strict_load_equals(model, tmp_path / 'out.pth', expected)
    # and back: codetr -> the layout, identical to what went in
    assert convert(
        tmp_path / 'out.pth',
        tmp_path / 'back.pth',
        '--to',
        layout,
        monkeypatch=monkeypatch) is None
    back = torch.load(tmp_path / 'back.pth', weights_only=True)['state_dict']
    assert list(back) == list(foreign)
    for name, tensor in foreign.items():
        assert torch.equal(back[name], tensor), name


def test_mmdet3_names_to_released():
    tensors = {
        'query_head.dn_generator.label_embedding.weight': torch.ones(3, 4),
        _Q + 'decoder.layers.0.attentions.1.value_proj.weight': torch.ones(1),
        'backbone.stages.0.downsample.norm.weight': torch.arange(8.),
        'backbone.stages.0.blocks.0.attn.w_msa.qkv.weight': torch.ones(1),
    }
    assert detect_layout(tensors) == MMDET3
    released = mmdet3_names.to_released(tensors)
    assert list(released) == [
        'query_head.label_embedding.weight',
        _Q + 'decoder.layers.0.attentions.1.value_proj.weight',
        'backbone.layers.0.downsample.norm.weight',
        'backbone.layers.0.blocks.0.attn.qkv.weight',
    ]
    assert torch.equal(released['backbone.layers.0.downsample.norm.weight'],
                       unfold_to_merge(torch.arange(8.)))
    back = mmdet3_names.from_released(released)
    assert list(back) == list(tensors)
    assert all(torch.equal(back[k], v) for k, v in tensors.items())
    # a ResNet Co-DINO of mmdet 3.x is told apart by its label embedding
    assert detect_layout({
        'query_head.dn_generator.label_embedding.weight': 0,
        'backbone.layer1.0.conv1.weight': 0
    }) == MMDET3


@pytest.mark.parametrize('case', ['foreign_module', 'clash', 'swin_key'])
def test_mmdet3_errors_name_the_keys(case, tmp_path, monkeypatch):
    state = {
        _Q + 'encoder.layers.0.attentions.0.value_proj.weight': torch.ones(1),
        'query_head.dn_generator.label_embedding.weight': torch.ones(1),
    }
    bad = {
        'foreign_module': 'data_preprocessor.mean',
        'clash': 'query_head.label_embedding.weight',
        'swin_key': 'backbone.stages.0.blocks.0.attn.w_msa.rogue',
    }[case]
    state[bad] = torch.ones(1)
    if case == 'swin_key':
        state['backbone.stages.0.blocks.0.norm1.weight'] = torch.ones(1)
    src = save_released(tmp_path / 'in.pth', state, 'bare')
    message = convert(
        src, tmp_path / 'out.pth', '--to', 'released',
        monkeypatch=monkeypatch)
    assert message.startswith('error: ') and bad in message
    assert not (tmp_path / 'out.pth').exists()


def test_co_dino_chain_mmdet3_released_codetr(tmp_path, monkeypatch):
    """mmdet 3.x Co-DINO -> released -> codetr, once codetr has Co-DINO."""
    if not osp.isfile(osp.join(REPO_ROOT, CO_DINO_CONFIG)):
        pytest.skip('no Co-DINO config shipped yet')
    model = build_model(tiny_zoo_model_cfg(CO_DINO_CONFIG), seed=2)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        mmdet3 = convert_layout(expected, CODETR, MMDET3)
    except UnmappedKeysError as err:
        pytest.skip(f'no Co-DINO released names yet: {err}')
    assert 'query_head.dn_generator.label_embedding.weight' in mmdet3
    assert 'query_head.label_embedding.weight' not in mmdet3
    assert detect_layout(mmdet3) == MMDET3
    src = save_released(tmp_path / 'mmdet3.pth', mmdet3, 'bare')
    assert convert(src, tmp_path / 'out.pth', monkeypatch=monkeypatch) is None
    strict_load_equals(model, tmp_path / 'out.pth', expected)
