"""Checkpoints of the official DAB-Deformable-DETR code in codetr
(projects/codetr/checkpoint/dab_detr_names.py): names, the decoder's copy of
the box branches, the 91-class COCO classifier, DETR-style files, and the
tools' detection of the layout."""
import argparse
import json

import pytest
import torch
from codetr_testing import REPO_ROOT, build_model, tiny_model_cfg
from parity_data import PARITY_DIR

from projects.codetr.checkpoint import (CheckpointError, UnmappedKeysError,
                                        check_load_from, convert_layout,
                                        detect_layout, load_weights)
from projects.codetr.checkpoint.dab_detr_names import (
    COCO_CATEGORY_IDS, convert_dab_detr_state_dict, to_dab_detr)

DAB_K0 = f'{REPO_ROOT}/configs/dab_deformable_detr_r50_50e_coco.py'


@pytest.fixture(scope='module')
def codetr_state():
    cfg = tiny_model_cfg(DAB_K0)
    return build_model(cfg).state_dict()


def official_state(codetr_state, num_classes=None):
    """What the official code saves for the same model: its names, the
    decoder's copy of ``bbox_embed``, no BatchNorm counters."""
    state = convert_layout(codetr_state, 'codetr', 'dab-detr')
    if num_classes:
        gen = torch.Generator().manual_seed(0)
        for key in [k for k in state if k.startswith('class_embed.')]:
            state[key] = torch.randn(
                num_classes, *state[key].shape[1:], generator=gen)
    return state


def test_every_official_name_of_the_golden_model_maps_to_the_parity_model():
    """The official model's complete tensor list (tests/data/parity/dab)
    is exactly what codetr's parity model maps to."""
    from dab_parity_data import dab_parity_model
    with open(PARITY_DIR / 'dab' / 'official_dab.json') as f:
        shapes = json.load(f)['shapes']
    model = dab_parity_model()
    ours = {}
    for name, tensor in model.state_dict().items():
        if name.endswith('num_batches_tracked'):
            continue
        ours[to_dab_detr(name)] = list(tensor.shape)
    official = {k: v for k, v in shapes.items()
                if not k.startswith('transformer.decoder.bbox_embed.')}
    assert ours == official


def test_round_trip_and_decoder_copy(codetr_state):
    official = official_state(codetr_state)
    assert 'transformer.decoder.bbox_embed.0.layers.2.weight' in official
    assert not any(k.endswith('num_batches_tracked') for k in official)
    back = convert_layout(official, 'dab-detr', 'codetr')
    assert back.keys() == codetr_state.keys()
    for key, value in back.items():
        assert torch.equal(value, codetr_state[key]), key
    official['transformer.decoder.bbox_embed.0.layers.2.bias'] = \
        official['bbox_embed.0.layers.2.bias'] + 1
    with pytest.raises(UnmappedKeysError, match='decoder copies'):
        convert_dab_detr_state_dict(official)


def test_coco_classifier_rows_follow_mmdet_labels(codetr_state):
    """A 91-output classifier (index = COCO category id) keeps the rows of
    the 80 ids in mmdet's label order."""
    official = official_state(codetr_state, num_classes=91)
    back = convert_dab_detr_state_dict(official)
    weight = back['query_head.cls_branches.0.weight']
    assert weight.shape[0] == 80 and len(set(COCO_CATEGORY_IDS)) == 80
    assert torch.equal(weight[11], official['class_embed.0.weight'][13])
    assert torch.equal(weight[79], official['class_embed.0.weight'][90])


def test_unsupported_variants_are_named(codetr_state):
    official = official_state(codetr_state)
    official['patterns_embed.weight'] = torch.zeros(3, 256)
    with pytest.raises(UnmappedKeysError, match='patterns_embed'):
        convert_dab_detr_state_dict(official)


def test_detr_style_file_is_detected_converted_and_refused_unconverted(
        tmp_path, codetr_state, monkeypatch):
    """The official code saves {'model', 'optimizer', 'lr_scheduler',
    'epoch', 'args'} with an argparse.Namespace: it is read with
    weights_only (the Namespace as plain data), detected, stopped before an
    unconverted load_from, and converted by tools/convert_checkpoint.py."""
    from test_convert_checkpoint import convert
    src = tmp_path / 'checkpoint0049.pth'
    torch.save(
        dict(
            model=official_state(codetr_state, num_classes=91),
            optimizer={},
            epoch=49,
            args=argparse.Namespace(lr=1e-4, modelname='dab_deformable_detr')),
        src)
    loaded = load_weights(str(src))
    assert loaded.layout == detect_layout(loaded.state_dict) == 'dab-detr'
    assert sorted(loaded.dropped) == ['args', 'epoch', 'optimizer']
    with pytest.raises(CheckpointError, match='convert_checkpoint.py'):
        check_load_from(str(src))
    dst = tmp_path / 'converted.pth'
    assert convert(src, dst, monkeypatch=monkeypatch) is None
    saved = torch.load(dst, weights_only=True)
    assert (saved['meta']['source_layout'], saved['meta']['layout']) == (
        'dab-detr', 'codetr')
    state = saved['state_dict']
    assert state.keys() == codetr_state.keys()
    assert state['query_head.cls_branches.0.weight'].shape[0] == 80
