"""RPN and ATSS losses over all levels at once (``batched_levels``, on by
default) against mmdet's per-level ``loss_by_feat``: the same values and
gradients, also with an image without boxes and levels without
positives."""
import copy

import pytest
import torch
from codetr_testing import build_model, make_batch, tiny_model_cfg

BATCHED_KEYS = ('loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls1', 'loss_bbox1',
                'loss_centerness1')


def total(value):
    return sum(value) if isinstance(value, (list, tuple)) else value


def losses_and_grads(batched: bool, num_boxes):
    cfg = copy.deepcopy(tiny_model_cfg())
    cfg.bbox_head.atss.batched_levels = batched
    cfg.rpn_head.batched_levels = batched
    model = build_model(cfg).train()
    inputs, samples = make_batch(model, num_boxes=num_boxes)
    torch.manual_seed(0)  # the RPN and RoI samplers draw
    losses = model.loss(inputs, samples)
    sum(total(losses[k]) for k in BATCHED_KEYS).backward()
    heads = list(model.bbox_head.named_parameters()) + list(
        model.rpn_head.named_parameters())
    grads = {n: p.grad.clone() for n, p in heads if p.grad is not None}
    return {k: total(v) for k, v in losses.items()}, grads


@pytest.mark.parametrize('num_boxes', [(3, 2), (2, 0)])
def test_batched_levels_match_mmdet(num_boxes):
    ours, our_grads = losses_and_grads(True, num_boxes)
    theirs, their_grads = losses_and_grads(False, num_boxes)
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        if key in BATCHED_KEYS:
            torch.testing.assert_close(
                ours[key], value, rtol=1e-6, atol=1e-7, msg=key)
        else:  # the other heads see the same assignment
            assert torch.equal(ours[key], value), key
    assert theirs['loss_bbox1'] > 0 and theirs['loss_rpn_bbox'] > 0
    assert our_grads.keys() == their_grads.keys() and our_grads
    for name, grad in their_grads.items():
        torch.testing.assert_close(
            our_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize('batched', [False, True])
def test_loss_entries_are_level_lists_unless_batched(batched):
    cfg = tiny_model_cfg()
    assert 'batched_levels' not in cfg.rpn_head  # the class default
    cfg.bbox_head.atss.batched_levels = batched
    cfg.rpn_head.batched_levels = batched
    model = build_model(cfg).train()
    inputs, samples = make_batch(model)
    losses = model.loss(inputs, samples)
    for key in BATCHED_KEYS:
        assert isinstance(losses[key], torch.Tensor if batched else list)


def test_levels_are_batched_by_default():
    model = build_model(tiny_model_cfg())
    assert model.rpn_head.batched_levels
    assert all(head.batched_levels for head in model.bbox_head
               if hasattr(head, 'batched_levels'))
