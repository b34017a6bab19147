"""Level sizes known on the host (``level_shapes``) give mmdet's stage
functions exactly the values they compute from the shape tensor."""
import pytest
import torch
from codetr_testing import build_model, tiny_model_cfg
from mmdet.models.detectors.deformable_detr import DeformableDETR
from mmdet.models.layers import DeformableDetrTransformerEncoder
from mmdet.structures import DetDataSample

from projects.codetr.models.task_modules import level_shapes
from projects.codetr.models.task_modules.level_shapes import (
    host_level_sizes, level_shape_tensors)

SHAPES = torch.tensor([[20, 25], [10, 13], [5, 7], [3, 4]])


def test_sizes_are_python_ints():
    sizes = host_level_sizes(SHAPES)
    assert sizes == [(20, 25), (10, 13), (5, 7), (3, 4)]
    assert all(type(v) is int for hw in sizes for v in hw)


def test_encoder_reference_points_are_identical():
    ratios = torch.tensor([[[1.0, 1.0]] * 4, [[0.8, 0.6]] * 4])
    get = DeformableDetrTransformerEncoder.get_encoder_reference_points
    ours = get(host_level_sizes(SHAPES), ratios, device='cpu')
    assert torch.equal(ours, get(SHAPES, ratios, device='cpu'))


def test_two_stage_proposals_are_identical():
    torch.manual_seed(0)
    host = torch.nn.Module()
    host.memory_trans_fc = torch.nn.Linear(8, 8)
    host.memory_trans_norm = torch.nn.LayerNorm(8)
    num = int(SHAPES.prod(1).sum())
    memory = torch.randn(2, num, 8)
    mask = torch.zeros(2, num, dtype=torch.bool)
    mask[1, ::3] = True
    gen = DeformableDETR.gen_encoder_output_proposals
    for memory_mask in (mask, None):
        ours = gen(host, memory, memory_mask, host_level_sizes(SHAPES))
        theirs = gen(host, memory, memory_mask, SHAPES)
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b)


def test_tracing_keeps_the_tensor():

    def sizes_as_tensor(shapes):
        out = host_level_sizes(shapes)
        assert out is shapes  # not read back: the graph stays dynamic
        return shapes * 1

    torch.jit.trace(sizes_as_tensor, (SHAPES, ), check_trace=False)


def test_cached_shape_tensors_carry_their_sizes_without_a_read():
    sizes = [(20, 25), (10, 13), (5, 7), (3, 4)]
    shapes, starts = level_shape_tensors(sizes, 'cpu')
    assert shapes.dtype == starts.dtype == torch.long
    assert torch.equal(shapes, SHAPES)
    assert starts.tolist() == [0, 500, 630, 665]
    assert level_shape_tensors(sizes, 'cpu')[0] is shapes  # cached
    # a meta tensor holds no values: reading it back would raise
    meta, _ = level_shape_tensors(sizes, 'meta')
    assert host_level_sizes(meta) == sizes


def test_cache_evicts_least_recent_but_never_pinned(monkeypatch):
    monkeypatch.setattr(level_shapes, '_CACHE', level_shapes.OrderedDict())
    monkeypatch.setattr(level_shapes, '_PINNED', set())
    monkeypatch.setattr(level_shapes, '_MAX_CACHED', 2)
    first, _ = level_shape_tensors([(4, 4)], 'cpu')
    key = (((4, 4), ), torch.device('cpu'))
    level_shapes._PINNED.add(key)  # as if read inside a graph capture
    for h in range(5, 9):
        level_shape_tensors([(h, 4)], 'cpu')
    assert key in level_shapes._CACHE
    assert level_shape_tensors([(4, 4)], 'cpu')[0] is first  # kept
    assert len(level_shapes._CACHE) == 2  # the pinned and the newest
    with torch.inference_mode():
        made, _ = level_shape_tensors([(9, 9)], 'cpu')
    assert not made.is_inference()  # can be saved for backward later


def test_all_valid_mask_gives_the_unmasked_proposals():
    """What the CUDA graph capture relies on: an all-False padding mask
    gives mmdet's two-stage proposals and memory of no mask, bit for bit."""
    torch.manual_seed(0)
    host = torch.nn.Module()
    host.memory_trans_fc = torch.nn.Linear(8, 8)
    host.memory_trans_norm = torch.nn.LayerNorm(8)
    memory = torch.randn(2, int(SHAPES.prod(1).sum()), 8)
    gen = DeformableDETR.gen_encoder_output_proposals
    sizes = host_level_sizes(SHAPES)
    unmasked = gen(host, memory, None, sizes)
    all_valid = gen(host, memory,
                    torch.zeros(memory.shape[:2], dtype=torch.bool), sizes)
    for a, b in zip(unmasked, all_valid):
        assert torch.equal(a, b)


@pytest.mark.parametrize('padded', [False, True])
def test_pre_transformer_gives_mmdets_inputs(padded):
    """Our pre_transformer (cached level shapes) against mmdet's own, on an
    unpadded batch (no masks) and a padded one, value for value."""
    model = build_model(tiny_model_cfg())
    transformer = model.query_head.transformer
    torch.manual_seed(0)
    feats = tuple(
        torch.randn(2, transformer.embed_dims, h, w)
        for h, w in [(16, 20), (8, 10), (4, 5), (2, 3)])
    samples = []
    for img_shape in [(128, 160), (96, 130) if padded else (128, 160)]:
        samples.append(
            DetDataSample(
                metainfo=dict(
                    img_shape=img_shape, batch_input_shape=(128, 160))))
    ours = transformer.pre_transformer(feats, samples)
    theirs = DeformableDETR.pre_transformer(transformer, feats, samples)
    for mine, ref in zip(ours, theirs):
        assert mine.keys() == ref.keys()
        for key, value in ref.items():
            if value is None:
                assert mine[key] is None, key
            else:
                assert mine[key].dtype == value.dtype, key
                assert torch.equal(mine[key], value), key
    assert (ours[0]['feat_mask'] is not None) == padded
