"""The models run in float64 (``model.double()``), and float32 is unchanged.

Small models of both families train and predict in float64 on the CPU,
with every output in float64. The parts that replace mmdet's or mmcv's
float32-only code give float32 values bit for bit equal to the originals,
and in float64 the values the originals would give in float64 (where
mmdet can be made to run in float64 by its default dtype) or the same
selections (mmcv's NMS kernels, which read float32 only). The float32
parity checks of ``test_parity.py`` / ``test_codino_parity.py`` cover the
whole models.
"""
import contextlib
import copy
import math

import pytest
import torch
from codetr_testing import build_model, make_batch, tiny_model_cfg
from mmcv import ops as mmcv_ops
from mmdet.models.detectors.deformable_detr import DeformableDETR
from mmdet.models.layers import SinePositionalEncoding
from mmdet.models.layers.transformer.utils import \
    coordinate_to_encoding as mmdet_coordinate_to_encoding
from mmdet.models.losses import CrossEntropyLoss
from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder
from mmdet.models.task_modules.prior_generators import AnchorGenerator
from zoo_testing import tiny_zoo_model_cfg

from projects.codetr.models.precision import any_dtype_nms
from projects.codetr.models.precision.any_dtype_heads import (
    AnyDtypeCrossEntropyLoss, AnyDtypeDeltaXYWHBBoxCoder)
from projects.codetr.models.task_modules.cached_anchor_generator import \
    CachedAnchorGenerator
from projects.codetr.models.transformers.co_transformer_base import \
    CoTransformerBase
from projects.codetr.models.transformers.sine_encoding import (
    CoSinePositionalEncoding, coordinate_to_encoding, proposal_pos_embed)

CONFIGS = {
    'co_deformable_detr': None,  # codetr_testing.tiny_model_cfg
    'co_dino': 'configs/co_dino_5scale_r50_1x_coco.py',
    # with FCOS as a third auxiliary head
    'k3_fcos': 'configs/co_deformable_detr_r50_1x_coco_k3_fcos.py',
}


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@pytest.fixture(scope='module', params=sorted(CONFIGS))
def tiny_double(request):
    """A tiny model of the family in float64 and a float64 batch."""
    config = CONFIGS[request.param]
    cfg = tiny_model_cfg() if config is None else tiny_zoo_model_cfg(config)
    # 40 queries x 3 classes: at least the 100 detections the heads keep
    cfg.query_head.num_query = 40
    model = build_model(cfg)
    inputs, samples = make_batch(model, image_sizes=((96, 128), (80, 112)))
    for sample in samples:
        sample.gt_instances.bboxes = sample.gt_instances.bboxes.double()
    return model.double(), inputs.double(), samples


def test_double_model_trains_in_float64(tiny_double):
    model, inputs, samples = tiny_double
    model.train()
    torch.manual_seed(0)
    losses = model.loss(inputs, samples)
    values = [
        v for value in losses.values()
        for v in (value if isinstance(value, (list, tuple)) else [value])
    ]
    # the accuracy of the RoI head is a metric, not a loss
    lossy = {k: v for k, v in losses.items() if 'loss' in k}
    assert any('aux' in k for k in lossy) and 'loss_centerness1' in lossy
    assert all(torch.isfinite(v).all() for v in values)
    wrong = {
        k: [
            v.dtype
            for v in (value if isinstance(value, (list, tuple)) else [value])
        ]
        for k, value in lossy.items()
    }
    wrong = {k: d for k, d in wrong.items() if set(d) != {torch.float64}}
    assert not wrong, wrong
    total = sum(v.sum() for v in values if v.requires_grad)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float64 for g in grads)
    model.zero_grad()
    model.eval()


@pytest.mark.parametrize('eval_module', ['detr', 'one-stage', 'two-stage'])
def test_double_model_predicts_in_float64(tiny_double, eval_module):
    model, inputs, samples = tiny_double
    model.eval()
    model.eval_module = eval_module
    try:
        # every dense auxiliary head (ATSS, FCOS) for 'one-stage'
        for index in range(len(model.bbox_head) if eval_module ==
                           'one-stage' else 1):
            model.eval_index = index
            with torch.no_grad():
                results = model.predict(inputs, samples, rescale=False)
            for result in results:
                pred = result.pred_instances
                assert len(pred) > 0
                assert pred.bboxes.dtype == pred.scores.dtype == \
                    torch.float64
    finally:
        model.eval_module, model.eval_index = 'detr', 0


def test_dense_heads_forward_as_mmdet_in_float32():
    """ATSS and FCOS keep mmdet's forward in float32 (they only stop
    casting float64 regressions to float32)."""
    from mmdet.models.dense_heads import ATSSHead, FCOSHead
    model = build_model(tiny_zoo_model_cfg(CONFIGS['k3_fcos']))
    feats = [torch.randn(2, 256, 12 // 2**i, 16 // 2**i) for i in range(3)]
    for head in model.bbox_head:
        for training in (True, False):  # FCOS scales by the stride at test
            head.train(training)
            with torch.no_grad():
                for lvl, feat in enumerate(feats):
                    if isinstance(head, FCOSHead):
                        args = (feat, head.scales[lvl], head.strides[lvl])
                        theirs = FCOSHead.forward_single(head, *args)
                    else:
                        args = (feat, head.scales[lvl])
                        theirs = ATSSHead.forward_single(head, *args)
                    ours = head.forward_single(*args)
                    assert all(map(torch.equal, ours, theirs))
    assert {type(h).__name__ for h in model.bbox_head} == {
        'CoATSSHead', 'CoFCOSHead'
    }


def masks() -> torch.Tensor:
    """(2, 9, 13) padding masks: image 0 unpadded, image 1 padded to the
    right and below (with whole padded rows and columns)."""
    mask = torch.zeros(2, 9, 13, dtype=torch.bool)
    mask[1, 6:] = True
    mask[1, :, 8:] = True
    return mask


@pytest.mark.parametrize('offset', [0.0, -0.5])
def test_sine_encoding_equals_mmdet_in_float32(offset):
    cfg = dict(num_feats=16, normalize=True, offset=offset, temperature=20)
    ours, theirs = CoSinePositionalEncoding(**cfg), SinePositionalEncoding(
        **cfg)
    feat = torch.randn(2, 4, 9, 13)
    for mask in (masks(), None):
        assert torch.equal(ours(mask, input=feat), theirs(mask, input=feat))
    assert torch.equal(ours(masks()), theirs(masks()))


@pytest.mark.parametrize('offset', [0.0, -0.5])
def test_sine_encoding_is_mmdet_s_float64_expression(offset):
    """In float64: mmdet's expression run in float64 (the released order),
    not a float32 result cast up."""
    cfg = dict(num_feats=16, normalize=True, offset=offset, temperature=20)
    feat = torch.randn(2, 4, 9, 13, dtype=torch.float64)
    ours = CoSinePositionalEncoding(**cfg)(masks(), input=feat)
    assert ours.dtype == torch.float64
    not_mask = (~masks()).double()
    y = not_mask.cumsum(1)
    y = (y + offset) / (y[:, -1:, :] + 1e-6) * (2 * math.pi)
    dim_t = torch.arange(16, dtype=torch.float64)
    dim_t = 20**(2 * (dim_t // 2) / 16)
    angle = y[:, :, :, None] / dim_t
    assert torch.equal(ours[:, 0], angle[..., 0].sin())
    assert torch.equal(ours[:, 1], angle[..., 1].cos())
    float32 = CoSinePositionalEncoding(**cfg)(masks(), input=feat.float())
    assert (ours - float32.double()).abs().max() > 1e-9


def test_proposal_and_query_encodings_equal_mmdet_in_float32():
    gen = torch.Generator().manual_seed(0)
    proposals = torch.randn(2, 7, 4, generator=gen)
    assert torch.equal(
        proposal_pos_embed(proposals, 32),
        DeformableDETR.get_proposal_pos_embed(proposals, 32))
    boxes = torch.rand(2, 7, 4, generator=gen)
    for coords in (boxes, boxes[..., :2]):
        assert torch.equal(
            coordinate_to_encoding(coords, 32),
            mmdet_coordinate_to_encoding(coords, 32))
        double = coordinate_to_encoding(coords.double(), 32)
        assert double.dtype == torch.float64
        torch.testing.assert_close(double.float(),
                                   mmdet_coordinate_to_encoding(coords, 32))
    assert proposal_pos_embed(proposals.double(), 32).dtype == torch.float64


@pytest.mark.parametrize('padded', [True, False])
def test_encoder_proposals_equal_mmdet_in_float32(padded):
    """``gen_encoder_output_proposals`` and ``get_valid_ratio``: mmdet's
    values in float32; float64 in float64."""
    base = CoTransformerBase.__new__(CoTransformerBase)
    torch.nn.Module.__init__(base)
    base.memory_trans_fc = torch.nn.Linear(8, 8)
    base.memory_trans_norm = torch.nn.LayerNorm(8)
    shapes = torch.tensor([[9, 13], [5, 7]])
    level_masks = [masks(), masks()[:, ::2, ::2]]
    memory = torch.randn(2, 9 * 13 + 5 * 7, 8)
    memory_mask = torch.cat([m.flatten(1) for m in level_masks], 1) \
        if padded else None
    ours = base.gen_encoder_output_proposals(memory, memory_mask, shapes)
    theirs = DeformableDETR.gen_encoder_output_proposals(
        base, memory, memory_mask, shapes)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    for mask in level_masks:
        assert torch.equal(
            base.get_valid_ratio(mask), DeformableDETR.get_valid_ratio(mask))
        assert base.get_valid_ratio(mask, torch.float64).dtype == \
            torch.float64
    double = copy.deepcopy(base).double()
    proposals = double.gen_encoder_output_proposals(memory.double(),
                                                    memory_mask, shapes)[1]
    assert proposals.dtype == torch.float64
    finite = proposals.isfinite()
    torch.testing.assert_close(proposals[finite].float(), ours[1][finite])


def test_anchors_in_float64_are_mmdet_s_float64_anchors():
    """float32: mmdet's anchors; float64: what mmdet builds when it runs in
    float64 (default dtype), not float32 anchors cast up."""
    cfg = dict(
        strides=[8, 16],
        ratios=[0.5, 1.0, 2.0],
        octave_base_scale=4,
        scales_per_octave=3)
    sizes = [(5, 7), (3, 4)]
    ours = CachedAnchorGenerator(**cfg)
    for a, b in zip(
            ours.grid_priors(sizes, device='cpu'),
            AnchorGenerator(**cfg).grid_priors(sizes, device='cpu')):
        assert torch.equal(a, b)
    with default_dtype(torch.float64):
        reference = AnchorGenerator(**cfg).grid_priors(
            sizes, dtype=torch.float64, device='cpu')
    double = ours.grid_priors(sizes, dtype=torch.float64, device='cpu')
    for a, b in zip(double, reference):
        assert a.dtype == torch.float64 and torch.equal(a, b)
    assert not torch.equal(double[0].float().double(), double[0])


def test_box_coder_and_loss_equal_mmdet_in_float32():
    gen = torch.Generator().manual_seed(0)
    boxes, gts = (random_boxes(20, seed)[0] for seed in (0, 1))
    stds = dict(target_means=[0.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2])
    ours, theirs = AnyDtypeDeltaXYWHBBoxCoder(**stds), DeltaXYWHBBoxCoder(
        **stds)
    assert torch.equal(ours.encode(boxes, gts), theirs.encode(boxes, gts))
    with default_dtype(torch.float64):  # mmdet casts to float32 anyway
        double = ours.encode(boxes.double(), gts.double())
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), theirs.encode(boxes, gts))

    logits = torch.randn(20, generator=gen)
    targets = torch.rand(20, generator=gen)
    cfg = dict(use_sigmoid=True, loss_weight=3.0)
    ours, theirs = AnyDtypeCrossEntropyLoss(**cfg), CrossEntropyLoss(**cfg)
    assert torch.equal(
        ours(logits, targets, avg_factor=7.0),
        theirs(logits, targets, avg_factor=7.0))
    double = ours(logits.double(), targets.double(), avg_factor=7.0)
    assert double.dtype == torch.float64  # mmdet's is float32
    assert theirs(logits.double(), targets.double()).dtype == torch.float32
    torch.testing.assert_close(double.float(),
                               ours(logits, targets, avg_factor=7.0))


def random_boxes(num: int, seed: int):
    """float32 boxes (their float64 casts are the same values) and distinct
    scores, a fifth of them below soft-NMS's ``min_score``. Not integer
    boxes: their overlaps can be exactly 0.7, which float32 rounds to the
    float32 threshold (kept) and float64 does not (suppressed)."""
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(num, 2, generator=gen) * 60
    boxes = torch.cat([xy, xy + torch.rand(num, 2, generator=gen) * 30 + 1], 1)
    scores = torch.randperm(num, generator=gen).float() / num + 1e-4
    scores[::5] *= 1e-3
    return boxes, scores


@pytest.mark.parametrize('seed', range(3))
def test_float64_nms_selects_as_mmcv(seed):
    boxes, scores = random_boxes(300, seed)
    for iou in (0.3, 0.7):
        dets, keep = mmcv_ops.nms(boxes, scores, iou)
        ours, ours_keep = any_dtype_nms.nms(boxes.double(), scores.double(),
                                            iou)
        assert 0 < len(keep) < len(boxes)
        assert torch.equal(ours_keep, keep) and torch.equal(
            ours, dets.double())
        # float32 goes to mmcv unchanged
        same = any_dtype_nms.nms(boxes, scores, iou)
        assert torch.equal(same[0], dets) and torch.equal(same[1], keep)


@pytest.mark.parametrize('method', ['linear', 'gaussian', 'naive'])
def test_float64_soft_nms_selects_as_mmcv(method):
    boxes, scores = random_boxes(300, 7)
    dets, keep = mmcv_ops.soft_nms(boxes, scores, 0.5, method=method)
    ours, ours_keep = any_dtype_nms.soft_nms(
        boxes.double(), scores.double(), 0.5, method=method)
    # the kernel's slot order (drops move the last box forward) included
    assert len(keep) < len(boxes) and torch.equal(ours_keep, keep)
    assert ours.dtype == torch.float64
    assert torch.equal(ours[:, :4], dets[:, :4].double())
    torch.testing.assert_close(ours[:, 4].float(), dets[:, 4])
    same = any_dtype_nms.soft_nms(boxes, scores, 0.5, method=method)
    assert torch.equal(same[0], dets) and torch.equal(same[1], keep)


def test_batched_nms_takes_the_any_dtype_config():
    boxes, scores = random_boxes(200, 3)
    labels = torch.arange(200) % 4
    for nms_cfg in (dict(type='nms', iou_threshold=0.5),
                    dict(type='soft_nms', iou_threshold=0.5)):
        cfg = any_dtype_nms.any_dtype_nms_cfg(dict(nms=nms_cfg))['nms']
        assert callable(cfg['type'])
        expected = mmcv_ops.batched_nms(boxes, scores, labels, nms_cfg)
        double = mmcv_ops.batched_nms(boxes.double(), scores.double(), labels,
                                      cfg)
        assert torch.equal(double[1], expected[1])
        torch.testing.assert_close(double[0].float(), expected[0])
        single = mmcv_ops.batched_nms(boxes, scores, labels, cfg)
        assert all(torch.equal(a, b) for a, b in zip(single, expected))
