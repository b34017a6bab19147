"""The training graph and gradient helpers shared by the gradient tests.

A pytest plugin of test_gradient_paths.py (pyramid, RoI and auxiliary-head
gradients against per-image references) and test_detach_points.py (the
detach points of docs/design.md), which load it with ``pytest_plugins``: its
fixtures
build the shrunk K = 3 model and one training forward per test module.
"""
import os.path as osp
from types import SimpleNamespace
from typing import Callable, Dict, Iterable, List, Sequence, Tuple

import pytest
import torch
from codetr_testing import REPO_ROOT, build_model, make_batch, tiny_model_cfg
from torch import Tensor, nn

FCOS_CONFIG = osp.join(REPO_ROOT, 'configs',
                       'co_deformable_detr_r50_1x_coco_k3_fcos.py')


# --------------------------------------------------------------- helpers
def total_loss(losses: Dict, keep: Callable[[str], bool] = None) -> Tensor:
    """Sum of the entries whose key contains 'loss' (and passes ``keep``);
    per-level lists (RPN) are summed too."""
    parts = []
    for key, value in losses.items():
        if 'loss' not in key or (keep is not None and not keep(key)):
            continue
        parts.extend(value if isinstance(value, (list, tuple)) else [value])
    assert parts, 'no loss selected'
    return sum(parts)


def grads(output: Tensor, inputs: Sequence[Tensor]) -> List[Tensor]:
    """d output / d inputs; an input that is not reached gets zeros."""
    found = torch.autograd.grad(
        output, list(inputs), retain_graph=True, allow_unused=True)
    return [
        torch.zeros_like(t) if g is None else g for t, g in zip(inputs, found)
    ]


def grad_norm(output: Tensor, modules: Iterable[nn.Module]) -> float:
    """Summed absolute gradient of ``output`` over the modules' parameters."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    return sum(g.abs().sum().item() for g in grads(output, params))


def assert_close_scaled(actual: Tensor,
                        expected: Tensor,
                        rtol: float,
                        msg: str = '') -> None:
    """allclose with an absolute tolerance relative to the largest value
    (gradients are small in absolute terms)."""
    atol = rtol * expected.abs().max().item()
    torch.testing.assert_close(
        actual, expected, rtol=rtol, atol=atol, msg=lambda m: f'{msg}\n{m}')


# -------------------------------------------------------------- fixtures
def _perturb_zero_inits(model: nn.Module) -> nn.Module:
    """Small random values in the zero-initialised last regression layers.

    With zero weights there, every gradient that must pass through a
    regression branch (encoder proposals, box refinement) is zero whether
    or not a detach is in place; a generic parameter point makes zero
    gradients mean "no path".
    """
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for branch in model.query_head.reg_branches:
            for p in branch[-1].parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
    return model


@pytest.fixture(scope='module')
def model() -> nn.Module:
    """The shrunk K = 3 model (the shipped k3_fcos config: the default
    RPN + RoI head and ATSS, plus FCOS), training mode."""
    model = build_model(tiny_model_cfg(path=FCOS_CONFIG))
    return _perturb_zero_inits(model).train()


@pytest.fixture(scope='module')
def batch(model) -> Tuple[Tensor, list]:
    """Two images of different sizes ((96, 128), (128, 112)), padded."""
    return make_batch(model)


@pytest.fixture(scope='module')
def train_graph(model, batch) -> SimpleNamespace:
    """One training forward, step by step as ``CoDETR.loss``, keeping the
    intermediate tensors (shared graph: every test retains it)."""
    inputs, samples = batch
    head = model.query_head
    x = model.extract_feat(inputs)
    outs = head.forward_transformer(x, samples)
    main = head.loss(outs['hidden_states'], outs['references'],
                     outs['enc_outputs_class'], outs['enc_outputs_coord'],
                     samples)
    pyramid = head.memory_to_pyramid(outs['memory'], x)
    torch.manual_seed(0)
    rpn_losses, proposals = model.rpn_loss_and_proposals(pyramid, samples)
    roi_losses, pos_rcnn = model.roi_head[0].loss_and_pos_coords(
        pyramid, proposals, samples)
    pos_coords = [pos_rcnn] + [
        dense_head.loss_and_pos_coords(pyramid, samples)[1]
        for dense_head in model.bbox_head
    ]
    assert [p.source for p in pos_coords] == ['rcnn', 'atss', 'fcos']
    torch.manual_seed(1)
    aux = head.loss_aux(outs, pos_coords, samples)
    return SimpleNamespace(
        samples=samples,
        x=x,
        outs=outs,
        main=main,
        pyramid=pyramid,
        rpn_losses=rpn_losses,
        proposals=proposals,
        roi_losses=roi_losses,
        pos_coords=pos_coords,
        aux=aux)
