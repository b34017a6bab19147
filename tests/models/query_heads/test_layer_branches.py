"""The branches of all decoder layers at once (``batched_branches=True``,
the default) give mmdet's per-layer loop's logits, boxes and gradients.

In float64 the two differ by the order of floating-point sums only; the
whole models' losses and gradients are compared for the three families.
"""
import copy
from typing import List, Tuple

import pytest
import torch
from mmcv.cnn import Linear as MMCVLinear
from torch import Tensor, nn
from zoo_testing import FAMILY_CONFIGS, double_batch, double_family_model

from projects.codetr.models.query_heads import layer_branches
from projects.codetr.models.query_heads.layer_branches import (
    layer_predictions, stackable, stacked_branches)


def reg_branch(dims: int, bias: bool = True) -> nn.Sequential:
    """mmdet's regression branch (``num_reg_fcs=2``)."""
    return nn.Sequential(
        nn.Linear(dims, dims, bias=bias), nn.ReLU(),
        nn.Linear(dims, dims, bias=bias), nn.ReLU(),
        nn.Linear(dims, 4, bias=bias))


def branches(num_layers: int = 3,
             dims: int = 8,
             classes: int = 5,
             shared: bool = False,
             bias: bool = True) -> Tuple[nn.ModuleList, nn.ModuleList]:
    """Classification and regression branches, one per layer plus one
    unused (as the two-stage heads have); ``shared``: one module of each
    repeated, as with mmdet's ``share_pred_layer``."""
    torch.manual_seed(0)
    if shared:
        cls, reg = nn.Linear(dims, classes, bias=bias), reg_branch(dims, bias)
        return (nn.ModuleList([cls] * num_layers),
                nn.ModuleList([reg] * num_layers))
    return (nn.ModuleList([
        nn.Linear(dims, classes, bias=bias) for _ in range(num_layers + 1)
    ]), nn.ModuleList([reg_branch(dims, bias) for _ in range(num_layers + 1)]))


def predictions_and_grads(cls_branches: nn.ModuleList,
                          reg_branches: nn.ModuleList, hidden: Tensor,
                          refs: List[Tensor], eps: float,
                          batched: bool) -> Tuple[Tensor, Tensor, list]:
    """Logits, boxes, and the gradients of a weighted sum of them with
    respect to the hidden states, the used references and every branch
    parameter (None where a parameter is not used)."""
    hidden = hidden.clone().requires_grad_()
    refs = [r.clone().requires_grad_() for r in refs]
    for p in list(cls_branches.parameters()) + list(
            reg_branches.parameters()):
        p.grad = None
    logits, boxes = layer_predictions(
        cls_branches, reg_branches, hidden, refs, eps=eps, batched=batched)
    # weights that make every element's gradient distinct
    torch.manual_seed(1)
    total = (logits * torch.randn_like(logits)).sum() + \
        (boxes * torch.randn_like(boxes)).sum()
    total.backward()
    grads = [hidden.grad] + [r.grad for r in refs[:len(hidden)]] + [
        p.grad for p in list(cls_branches.parameters()) +
        list(reg_branches.parameters())
    ]
    return logits, boxes, grads


def inputs(num_layers: int = 3,
           bs: int = 2,
           queries: int = 7,
           dims: int = 8) -> Tuple[Tensor, List[Tensor]]:
    """float64 hidden states (num_layers, bs, queries, dims) and
    num_layers + 1 references (bs, queries, 4) in [0, 1], some of them
    below or at the inverse sigmoid's clamps (1e-5 and 1e-3)."""
    torch.manual_seed(2)
    hidden = torch.randn(num_layers, bs, queries, dims, dtype=torch.float64)
    refs = [torch.rand(bs, queries, 4, dtype=torch.float64)
            for _ in range(num_layers + 1)]
    refs[0][0, 0] = torch.tensor([0., 1., 1e-7, 0.5], dtype=torch.float64)
    refs[1][1, 2] = torch.tensor([2e-4, 5e-4, 1 - 2e-4, 1e-6],
                                 dtype=torch.float64)
    return hidden, refs


@pytest.mark.parametrize('shared,bias,eps', [(False, True, 1e-5),
                                             (False, True, 1e-3),
                                             (True, True, 1e-3),
                                             (False, False, 1e-5)])
def test_stacked_layers_give_the_loops_values_and_gradients(shared, bias, eps):
    cls_branches, reg_branches = branches(shared=shared, bias=bias)
    cls_branches.double(), reg_branches.double()
    assert stackable(cls_branches[:3]) and stackable(reg_branches[:3])
    hidden, refs = inputs()
    loop = predictions_and_grads(cls_branches, reg_branches, hidden, refs,
                                 eps, batched=False)
    batched = predictions_and_grads(cls_branches, reg_branches, hidden,
                                    refs, eps, batched=True)
    assert batched[0].shape == (3, 2, 7, 5)
    assert batched[1].shape == (3, 2, 7, 4)
    for got, want in zip(batched[:2], loop[:2]):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    assert len(batched[2]) == len(loop[2])
    for i, (got, want) in enumerate(zip(batched[2], loop[2])):
        if want is None:  # the unused last branch
            assert got is None, i
            continue
        assert want.abs().sum() > 0, i
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14,
                                   msg=f'gradient {i}')


def test_the_eps_reaches_the_stacked_path():
    """References below the clamp: 1e-3 and 1e-5 give other boxes."""
    cls_branches, reg_branches = branches()
    hidden, refs = inputs()
    wide = layer_predictions(cls_branches.double(), reg_branches.double(),
                             hidden, refs, eps=1e-3)[1]
    narrow = layer_predictions(cls_branches, reg_branches, hidden, refs,
                               eps=1e-5)[1]
    assert not torch.allclose(wide[1, 1, 2], narrow[1, 1, 2])
    assert torch.equal(wide[2], narrow[2])  # no reference clamped there


def test_float32_stays_within_float32_rounding():
    cls_branches, reg_branches = branches(dims=256, classes=80)
    hidden, refs = inputs(queries=300, dims=256)
    loop = layer_predictions(cls_branches, reg_branches, hidden.float(),
                             [r.float() for r in refs], 1e-5, batched=False)
    batched = layer_predictions(cls_branches, reg_branches, hidden.float(),
                                [r.float() for r in refs], 1e-5)
    for got, want in zip(batched, loop):
        # 256-term dot products: a few float32 ulps of the largest terms
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_an_empty_query_set_gives_empty_predictions():
    cls_branches, reg_branches = branches()
    hidden = torch.zeros(3, 2, 0, 8)
    refs = [torch.zeros(2, 0, 4) for _ in range(4)]
    logits, boxes = layer_predictions(cls_branches, reg_branches, hidden,
                                      refs, 1e-5)
    assert logits.shape == (3, 2, 0, 5) and boxes.shape == (3, 2, 0, 4)


def test_branches_of_another_structure_take_the_loop():
    cls_branches, reg_branches = branches()
    assert stackable(cls_branches) and stackable(reg_branches)
    other = copy.deepcopy(reg_branches)
    other[1] = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 4))
    assert not stackable(other)
    wider = copy.deepcopy(reg_branches)
    wider[2] = nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(),
        nn.Linear(8, 4))
    assert not stackable(wider)
    no_bias = copy.deepcopy(cls_branches)
    no_bias[0] = nn.Linear(8, 5, bias=False)
    assert not stackable(no_bias)
    assert not stackable([])

    class LowRankLinear(nn.Linear):
        """A subclass whose forward is not the plain product."""

        def forward(self, x: Tensor) -> Tensor:
            return super().forward(x) * 2

    subclass = copy.deepcopy(cls_branches)
    subclass[1] = LowRankLinear(8, 5)
    assert not stackable(subclass)
    # mmdet builds its branches from mmcv's Linear: that one is stacked
    mmcv_linear = copy.deepcopy(cls_branches)
    mmcv_linear[1] = MMCVLinear(8, 5)
    assert stackable(mmcv_linear)
    hooked = copy.deepcopy(reg_branches)
    hooked[0][2].register_forward_hook(lambda *args: None)
    assert not stackable(hooked)
    hidden, refs = inputs()
    hidden, refs = hidden.float(), [r.float() for r in refs]
    got = layer_predictions(cls_branches, other, hidden, refs, 1e-5)
    want = layer_predictions(cls_branches, other, hidden, refs, 1e-5,
                             batched=False)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_stacked_branches_apply_each_branch_to_its_slice():
    _, reg_branches = branches()
    x = torch.randn(3, 4, 8)
    out = stacked_branches(list(reg_branches)[:3], x)
    for layer in range(3):
        torch.testing.assert_close(out[layer], reg_branches[layer](x[layer]))


def _losses_and_grads(model: nn.Module, batch_inputs: Tensor,
                      samples: list, batched: bool) -> Tuple[dict, dict]:
    """Losses and parameter gradients of one training step, the branches
    of all layers at once (``batched``) or in mmdet's loop."""
    model.query_head.batched_branches = batched
    model.zero_grad()
    torch.manual_seed(0)  # the same random samples in both runs
    losses = model.loss(batch_inputs, samples)
    total = sum(v for k, v in losses.items() if 'loss' in k)
    total.backward()
    grads = {
        name: p.grad.clone()
        for name, p in model.named_parameters() if p.grad is not None
    }
    return losses, grads


@pytest.mark.parametrize('family', sorted(FAMILY_CONFIGS))
def test_a_models_losses_and_gradients_do_not_change(family, monkeypatch):
    model = double_family_model(family, decoder_layers=3)
    head = model.query_head
    assert head.batched_branches  # the default
    assert stackable(head.cls_branches[:3]) and stackable(
        head.reg_branches[:3])
    calls = []

    def counted(branches, inputs):
        calls.append(inputs.shape[0])
        return stacked_branches(branches, inputs)

    monkeypatch.setattr(layer_branches, 'stacked_branches', counted)
    batch_inputs, samples = double_batch(model)
    loop, loop_grads = _losses_and_grads(model, batch_inputs, samples, False)
    assert calls == []
    batched, grads = _losses_and_grads(model, batch_inputs, samples, True)
    # the class and box branches of the 3 layers, once per head forward
    assert calls and set(calls) == {3} and len(calls) % 2 == 0
    assert list(batched) == list(loop)
    for key, value in loop.items():
        torch.testing.assert_close(
            batched[key], value, rtol=1e-10, atol=1e-12, msg=key)
    assert grads.keys() == loop_grads.keys()
    for name, grad in loop_grads.items():
        torch.testing.assert_close(
            grads[name], grad, rtol=1e-9, atol=1e-11, msg=name)
