"""Auxiliary heads swapped by config edits (K = 0..3) and the FCOS head."""
import os.path as osp
from typing import Dict, List

import pytest
import torch
from codetr_testing import (REPO_ROOT, build_model, load_config, make_batch,
                            tiny_model_cfg)
from mmengine.structures import InstanceData

from projects.codetr.models import CoFCOSHead

CFG_DIR = osp.join(REPO_ROOT, 'configs')
DEC_LAYERS = 2  # tiny_model_cfg default: keys d0.* and the last layer
MAIN = ('cls', 'bbox', 'iou')

# config suffix -> (RoI heads, dense heads in order, with_pos_coord)
SHIPPED = {
    'k0': (0, [], True),
    'atss': (0, ['atss'], True),
    'rcnn': (1, [], True),
    '': (1, ['atss'], True),  # the default pair
    'k3_fcos': (1, ['atss', 'fcos'], True),
    'nopos': (1, ['atss'], False),
}
HEAD_CLASS = {'atss': 'CoATSSHead', 'fcos': 'CoFCOSHead'}


def config_path(suffix: str) -> str:
    name = 'co_deformable_detr_r50_1x_coco' + (f'_{suffix}' if suffix else '')
    return osp.join(CFG_DIR, name + '.py')


def head_keys(num_roi: int, dense: List[str]) -> set:
    """Loss keys of the auxiliary heads themselves (RoI heads first)."""
    keys = {'loss_rpn_cls', 'loss_rpn_bbox'} if num_roi else set()
    for i in range(num_roi):
        keys.update({f'loss_cls{i}', f'loss_bbox{i}', f'acc{i}'})
    for j, _ in enumerate(dense):  # ATSS and FCOS report the same keys
        k = num_roi + j
        keys.update({f'loss_cls{k}', f'loss_bbox{k}', f'loss_centerness{k}'})
    return keys


def expected_keys(num_roi: int, dense: List[str], with_pos: bool) -> set:
    """Every loss key of a model with these auxiliary heads."""
    keys = head_keys(num_roi, dense)
    for name in MAIN:
        keys.update({f'loss_{name}', f'enc_loss_{name}'})
        keys.update(f'd{i}.loss_{name}' for i in range(DEC_LAYERS - 1))
    # 3 x DEC_LAYERS keys per head that decodes positive coordinates.
    for k in range(num_roi + len(dense) if with_pos else 0):
        for name in MAIN:
            keys.add(f'loss_{name}_aux{k}')
            keys.update(f'd{i}.loss_{name}_aux{k}'
                        for i in range(DEC_LAYERS - 1))
    return keys


@pytest.fixture(scope='module')
def models() -> Dict[str, torch.nn.Module]:
    """Shrunk models of the shipped configs, built once on first use."""
    cache = {}

    def get(suffix: str) -> torch.nn.Module:
        if suffix not in cache:
            cache[suffix] = build_model(
                tiny_model_cfg(path=config_path(suffix)))
        return cache[suffix]

    return get


@pytest.mark.parametrize('suffix', list(SHIPPED))
def test_shipped_config_keys_and_gradients(models, suffix):
    num_roi, dense, with_pos = SHIPPED[suffix]
    model = models(suffix).train()
    num_co_heads = num_roi + len(dense) if with_pos else 0
    transformer = model.query_head.transformer
    assert transformer.num_co_heads == num_co_heads
    assert len(transformer.aux_pos_trans) == num_co_heads
    assert hasattr(transformer, 'head_pos_embed') == (num_co_heads > 0)
    assert [type(h).__name__
            for h in model.bbox_head] == [HEAD_CLASS[d] for d in dense]
    assert len(model.roi_head) == num_roi and model.with_rpn == bool(num_roi)

    model.zero_grad()
    inputs, samples = make_batch(model, num_boxes=(3, 0))
    losses = model.loss(inputs, samples)
    assert set(losses) == expected_keys(num_roi, dense, with_pos)
    total, _ = model.parse_losses(losses)
    assert torch.isfinite(total)
    total.backward()
    missing = [
        n for n, p in model.named_parameters()
        if p.requires_grad and p.grad is None
    ]
    assert missing == []


def test_k0_has_no_auxiliary_parameters(models):
    names = [n for n, _ in models('k0').named_parameters()]
    aux_parts = ('rpn_head.', 'roi_head.', 'bbox_head.',
                 'query_head.downsample.', 'query_head.transformer.aux_',
                 'query_head.transformer.pos_feats_',
                 'query_head.transformer.head_pos_embed')
    assert any(n.startswith('query_head.transformer.') for n in names)
    assert [n for n in names if n.startswith(aux_parts)] == []


# (config, eval_module, eval_index, head class that must run)
EVAL_CASES = [
    ('atss', 'one-stage', 0, 'CoATSSHead'),
    ('rcnn', 'two-stage', 0, 'CoStandardRoIHead'),
    ('k3_fcos', 'one-stage', 0, 'CoATSSHead'),
    ('k3_fcos', 'one-stage', 1, 'CoFCOSHead'),
    ('k3_fcos', 'two-stage', 0, 'CoStandardRoIHead'),
]


@pytest.mark.parametrize('suffix,eval_module,eval_index,head', EVAL_CASES)
def test_predict_with_each_auxiliary_head(models, monkeypatch, suffix,
                                          eval_module, eval_index, head):
    model = models(suffix).eval()
    monkeypatch.setattr(model, 'eval_module', eval_module)
    monkeypatch.setattr(model, 'eval_index', eval_index)
    heads = model.bbox_head if eval_module == 'one-stage' else model.roi_head
    chosen = heads[eval_index]
    assert type(chosen).__name__ == head
    calls = []
    original = chosen.predict
    monkeypatch.setattr(chosen, 'predict',
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    sizes = ((96, 128), (128, 112))
    inputs, samples = make_batch(model, image_sizes=sizes, training=False)
    with torch.no_grad():
        results = model.predict(inputs, samples, rescale=True)
    assert calls == [1]
    for result, (h, w) in zip(results, sizes):
        pred = result.pred_instances
        assert 0 < len(pred.bboxes) <= 100
        assert len(pred.scores) == len(pred.labels) == len(pred.bboxes)
        assert (pred.bboxes >= 0).all()
        assert (pred.bboxes[:, 0::2] <= w).all()
        assert (pred.bboxes[:, 1::2] <= h).all()


def test_k0_rejects_auxiliary_eval_modes():
    cfg = tiny_model_cfg(path=config_path('k0'))
    cfg.eval_module = 'one-stage'
    with pytest.raises(ValueError, match=r'bbox_head\[0\]'):
        build_model(cfg)


def test_rpn_without_roi_head_is_rejected():
    cfg = tiny_model_cfg(path=config_path('atss'))
    cfg.rpn_head = load_config().model.rpn_head
    with pytest.raises(ValueError, match='rpn_head=None'):
        build_model(cfg)


def test_fcos_config_loss_weights_are_times_twelve():
    fcos = load_config(config_path('k3_fcos')).model.bbox_head.fcos
    assert fcos.loss_cls.loss_weight == 12
    assert fcos.loss_bbox.loss_weight == 12
    assert fcos.loss_centerness.loss_weight == 12
    assert fcos.norm_on_bbox and fcos.center_sampling


@pytest.mark.parametrize('edit,sources', [
    ('add_fcos', ['rcnn', 'atss', 'fcos']),
    ('drop_atss', ['rcnn']),
])
def test_one_config_edit_adds_or_drops_a_head(edit, sources):
    """One named entry changes the head count and the key numbering."""
    cfg = tiny_model_cfg()
    if edit == 'add_fcos':
        cfg.bbox_head.fcos = load_config(
            config_path('k3_fcos')).model.bbox_head.fcos
    else:
        cfg.bbox_head.atss = None
    model = build_model(cfg).train()
    assert model.query_head.num_co_heads == len(sources)
    inputs, samples = make_batch(model)
    feats = model.extract_feat(inputs)
    memory = model.query_head.encode(feats, samples)['memory']
    pyramid = model.query_head.memory_to_pyramid(memory, feats)
    losses, pos_coords = model.aux_heads_loss(pyramid, samples)
    assert [c.source for c in pos_coords] == sources
    assert set(losses) == head_keys(1, sources[1:])


# ---------------------------------------------------------------- FCOS ----
IMG_HW = (256, 320)
STRIDES = (8, 16, 32, 64, 128)
RANGES = ((-1, 64), (64, 128), (128, 256), (256, 512), (512, 1e8))
# Integer boxes: every step of the ltrb round trip is exact in float32.
# Largest point-to-side distances near the centres: 80-104 px for box 0
# (stride-16 range), 142-190 px for box 1 (stride-32 range).
GT = [
    torch.tensor([[40., 48., 200., 160.]]),
    torch.tensor([[16., 8., 300., 250.]]),
]


def fcos_head(norm_on_bbox: bool) -> CoFCOSHead:
    """The head of the shipped K = 3 config, 32 channels wide."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = load_config(config_path('k3_fcos')).model.bbox_head.fcos
    cfg.update(
        num_classes=3,
        in_channels=32,
        feat_channels=32,
        norm_on_bbox=norm_on_bbox)
    torch.manual_seed(0)
    head = MODELS.build(cfg)
    head.init_weights()
    return head.train()


def expected_positives(box: torch.Tensor, level: int, h: int,
                       w: int) -> torch.Tensor:
    """FCOS's rule for one box: inside the box and within 1.5 strides of
    its centre, largest ltrb distance inside the level's range. (h, w)."""
    stride, (low, high) = STRIDES[level], RANGES[level]
    ys = (torch.arange(h) + 0.5) * stride
    xs = (torch.arange(w) + 0.5) * stride
    ys, xs = ys[:, None].expand(h, w), xs[None].expand(h, w)
    x1, y1, x2, y2 = box.tolist()
    cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, 1.5 * stride
    inside = (xs > max(x1, cx - r)) & (xs < min(x2, cx + r)) & \
        (ys > max(y1, cy - r)) & (ys < min(y2, cy + r))
    dist = torch.stack([xs - x1, ys - y1, x2 - xs, y2 - ys]).amax(0)
    return inside & (dist >= low) & (dist <= high)


def fcos_batch():
    """Pyramid (2, 32, H / s, W / s) and one box per image, labels 1, 2."""
    from mmdet.structures import DetDataSample
    gen = torch.Generator().manual_seed(0)
    h, w = IMG_HW
    sizes = [(-(-h // s), -(-w // s)) for s in STRIDES]
    x = tuple(torch.randn(2, 32, *hw, generator=gen) for hw in sizes)
    samples = []
    for i, box in enumerate(GT):
        sample = DetDataSample(
            metainfo=dict(
                img_shape=IMG_HW, pad_shape=IMG_HW, batch_input_shape=IMG_HW))
        sample.gt_instances = InstanceData(
            bboxes=box, labels=torch.tensor([i + 1]))
        samples.append(sample)
    return x, samples, sizes


@pytest.mark.parametrize('norm_on_bbox', [True, False])
def test_fcos_positive_coords_by_hand(norm_on_bbox):
    head = fcos_head(norm_on_bbox)
    x, samples, sizes = fcos_batch()
    losses, pos = head.loss_and_pos_coords(x, samples)
    assert set(losses) == {'loss_cls', 'loss_bbox', 'loss_centerness'}
    assert all(v > 0 for v in losses.values())
    num_points = sum(h * w for h, w in sizes)
    assert pos.coords.shape == pos.targets.shape == (2, num_points, 4)
    assert pos.labels.shape == (2, num_points)
    assert pos.feats.shape == (2, num_points, 32)
    assert pos.source == 'fcos'

    start, pos_levels = 0, [set(), set()]
    for level, (h, w) in enumerate(sizes):
        end = start + h * w
        stride, side = STRIDES[level], 2**(level + 6)
        # Anchors: side 2 ** (level + 6) centred on the points, row-major.
        ys, xs = torch.meshgrid(
            (torch.arange(h) + 0.5) * stride, (torch.arange(w) + 0.5) * stride,
            indexing='ij')
        centres = torch.stack([xs, ys], -1).reshape(-1, 2)
        anchors = pos.coords[:, start:end]
        assert torch.equal(anchors[..., 2:] - anchors[..., :2],
                           torch.full((2, h * w, 2), float(side)))
        assert torch.equal((anchors[..., :2] + anchors[..., 2:]) / 2,
                           centres.expand(2, -1, -1))
        for i, box in enumerate(GT):
            labels = pos.labels[i, start:end]
            is_pos = labels < 3
            assert torch.equal(
                is_pos,
                expected_positives(box[0], level, h, w).flatten())
            assert (labels[is_pos] == i + 1).all()
            assert (labels[~is_pos] == 3).all()
            targets = pos.targets[i, start:end]
            assert torch.equal(targets[is_pos],
                               box.expand(int(is_pos.sum()), 4))
            assert (targets[~is_pos] == 0).all()
            # Positive points lie inside the box, in the level's range.
            p = centres[is_pos]
            x1, y1, x2, y2 = box[0]
            assert ((p[:, 0] > x1) & (p[:, 0] < x2) & (p[:, 1] > y1)
                    & (p[:, 1] < y2)).all()
            dist = torch.stack(
                [p[:, 0] - x1, p[:, 1] - y1, x2 - p[:, 0],
                 y2 - p[:, 1]]).amax(0)
            low, high = RANGES[level]
            assert ((dist >= low) & (dist <= high)).all()
            if is_pos.any():
                pos_levels[i].add(level)
            # Features: the pyramid feature at each point.
            torch.testing.assert_close(
                pos.feats[i, start:end],
                x[level][i].flatten(1).t(),
                rtol=0,
                atol=0)
        start = end
    # The small box is assigned at stride 16, the large one at stride 32:
    # per-image targets are not mixed up between images or levels.
    assert pos_levels == [{1}, {2}]


def test_fcos_positive_coords_without_ground_truth():
    head = fcos_head(True)
    x, samples, _ = fcos_batch()
    for sample in samples:
        sample.gt_instances = InstanceData(
            bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
    losses, pos = head.loss_and_pos_coords(x, samples)
    assert (pos.labels == 3).all() and (pos.targets == 0).all()
    assert losses['loss_cls'] > 0
    assert losses['loss_bbox'] == 0 and losses['loss_centerness'] == 0
