"""Training and inference of the shrunk Co-Deformable-DETR (docs/design.md,
data flow and inference)."""
import math

import pytest
import torch
from codetr_testing import build_model, make_batch, tiny_model_cfg

MAIN = ('cls', 'bbox', 'iou')


def value(loss) -> float:
    """A loss entry as a float (the RPN gives one tensor per level)."""
    if isinstance(loss, (list, tuple)):
        return sum(v.item() for v in loss)
    return loss.item()


def expected_loss_keys(dec_layers: int = 6) -> set:
    """Loss keys docs/design.md, data flow for the default RoI + ATSS heads."""
    keys = set()
    for name in MAIN:
        keys.add(f'loss_{name}')
        keys.add(f'enc_loss_{name}')
        keys.update(f'd{i}.loss_{name}' for i in range(dec_layers - 1))
        for k in range(2):
            keys.add(f'loss_{name}_aux{k}')
            keys.update(f'd{i}.loss_{name}_aux{k}'
                        for i in range(dec_layers - 1))
    keys.update({'loss_rpn_cls', 'loss_rpn_bbox'})
    keys.update({'loss_cls0', 'loss_bbox0', 'acc0'})  # RoI head 0
    keys.update({'loss_cls1', 'loss_bbox1', 'loss_centerness1'})  # ATSS
    return keys


@pytest.fixture(scope='module')
def model6():
    """Six decoder layers, so that d0..d4 keys exist."""
    return build_model(tiny_model_cfg(dec_layers=6))


@pytest.fixture(scope='module')
def model2():
    return build_model(tiny_model_cfg(dec_layers=2))


def test_loss_keys_and_finite(model6):
    inputs, samples = make_batch(model6)
    model6.train()
    losses = model6.loss(inputs, samples)
    assert set(losses) == expected_loss_keys(6)
    aux_query_keys = [k for k in losses if '_aux' in k]
    assert len(aux_query_keys) == 36
    for key, value in losses.items():
        assert torch.isfinite(torch.as_tensor(value)).all(), key


def test_every_parameter_gets_gradient_with_an_empty_image(model2):
    model2.train()
    model2.zero_grad()
    inputs, samples = make_batch(model2, num_boxes=(3, 0))
    losses = model2.loss(inputs, samples)
    total, _ = model2.parse_losses(losses)  # sums per-level RPN lists too
    total.backward()
    missing = [
        name for name, p in model2.named_parameters()
        if p.requires_grad and p.grad is None
    ]
    assert missing == []
    assert all(
        torch.isfinite(p.grad).all() for p in model2.parameters()
        if p.grad is not None)


def _branch_losses(losses: dict) -> dict:
    """(classification key, box keys) of every branch."""
    branches = {
        'main': ('loss_cls', ['loss_bbox', 'loss_iou']),
        'encoder': ('enc_loss_cls', ['enc_loss_bbox', 'enc_loss_iou']),
        'rpn': ('loss_rpn_cls', ['loss_rpn_bbox']),
        'roi': ('loss_cls0', ['loss_bbox0']),
        'atss': ('loss_cls1', ['loss_bbox1', 'loss_centerness1']),
    }
    for k in range(2):
        branches[f'aux{k}'] = (f'loss_cls_aux{k}',
                               [f'loss_bbox_aux{k}', f'loss_iou_aux{k}'])
    return branches


def test_empty_ground_truth_rule(model2):
    """No object: classification > 0, every box loss == 0 (mmdet rule)."""
    model2.train()
    inputs, samples = make_batch(model2, num_boxes=(0, 0))
    losses = model2.loss(inputs, samples)
    for branch, (cls_key, box_keys) in _branch_losses(losses).items():
        assert value(losses[cls_key]) > 0, branch
        for key in box_keys:
            assert value(losses[key]) == 0, (branch, key)


def test_one_box_rule(model2):
    """One object: every loss of every branch > 0."""
    model2.train()
    boxes = [
        torch.tensor([[20., 24., 70., 80.]]),
        torch.tensor([[10., 10., 60., 50.]])
    ]
    inputs, samples = make_batch(model2, boxes=boxes)
    losses = model2.loss(inputs, samples)
    for branch, (cls_key, box_keys) in _branch_losses(losses).items():
        for key in [cls_key, *box_keys]:
            assert value(losses[key]) > 0, (branch, key)


@pytest.mark.parametrize('eval_module', ['detr', 'one-stage', 'two-stage'])
def test_predict_every_eval_module(eval_module):
    cfg = tiny_model_cfg(num_query=40)  # 40 x 3 classes >= 100 detections
    cfg.eval_module = eval_module
    model = build_model(cfg)
    sizes = ((96, 128), (128, 112))
    inputs, samples = make_batch(model, image_sizes=sizes, training=False)
    with torch.no_grad():
        results = model.predict(inputs, samples, rescale=True)
    assert len(results) == 2
    for result, (h, w) in zip(results, sizes):
        pred = result.pred_instances
        assert 0 < len(pred.bboxes) <= 100
        assert len(pred.scores) == len(pred.labels) == len(pred.bboxes)
        assert (pred.bboxes[:, 0::2] >= 0).all()
        assert (pred.bboxes[:, 0::2] <= w).all()
        assert (pred.bboxes[:, 1::2] >= 0).all()
        assert (pred.bboxes[:, 1::2] <= h).all()
        assert pred.labels.max() < 3


def test_auxiliary_eval_modes_skip_the_decoder(monkeypatch):
    cfg = tiny_model_cfg(num_query=40)
    cfg.eval_module = 'one-stage'
    model = build_model(cfg)

    def fail(*args, **kwargs):
        raise AssertionError('the decoder must not run')

    monkeypatch.setattr(model.query_head.transformer.decoder, 'forward',
                        fail)
    inputs, samples = make_batch(model, training=False)
    with torch.no_grad():
        model.predict(inputs, samples)


def test_tensor_mode(model2):
    inputs, samples = make_batch(model2, training=False)
    with torch.no_grad():
        cls_scores, boxes = model2(inputs, samples, mode='tensor')
    assert cls_scores.shape == (2, 2, 10, 3)
    assert boxes.shape == (2, 2, 10, 4)
    assert ((boxes >= 0) & (boxes <= 1)).all()


def _layer1_box_grad_on_layer0(look_forward_twice: bool) -> float:
    cfg = tiny_model_cfg(dec_layers=2)
    cfg.query_head.transformer.decoder.look_forward_twice = look_forward_twice
    model = build_model(cfg).train()
    inputs, samples = make_batch(model)
    head = model.query_head
    outs = head.forward_transformer(model.extract_feat(inputs), samples)
    _, boxes = head(outs['hidden_states'], outs['references'])
    model.zero_grad()
    boxes[1].sum().backward()  # the box output of decoder layer 1 only
    grad = head.reg_branches[0][-1].weight.grad
    return 0.0 if grad is None else grad.abs().sum().item()


def test_look_forward_twice():
    """Layer l+1's box loss trains regression branch l only with LFT."""
    assert _layer1_box_grad_on_layer0(True) > 0
    assert _layer1_box_grad_on_layer0(False) == 0


@pytest.mark.parametrize('mode,dims', [('scalar', 1), ('vector', 256)])
def test_head_pos_embed_modes(mode, dims):
    cfg = tiny_model_cfg()
    cfg.query_head.transformer.head_pos_embed = mode
    model = build_model(cfg)
    weight = model.query_head.transformer.head_pos_embed.weight
    assert weight.shape == (2, dims)
    # xavier-uniform bound for a (2, dims) matrix
    bound = math.sqrt(6 / (2 + dims))
    assert weight.abs().max() <= bound
