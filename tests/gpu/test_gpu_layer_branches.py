"""All decoder layers' branches at once (``batched_branches``) on a GPU:
the per-layer loop's logits, boxes and gradients from cuBLAS's batched
products, in float32 and under float16 autocast, at Co-Deformable-DETR's
sizes (6 layers, 2 images x 300 queries, 256 wide, 80 classes).

The bounds follow from the precision, relative to the largest magnitude
of each compared tensor: float32 products of 256 terms may round
differently by a few units of 2^-24 per term (bound 1e-5), and under
autocast each of the regression branch's three products rounds its
result to float16 (2^-11, about 4.9e-4), so the two paths may differ by a
few float16 units (bound 4e-3, 8 units), the gradients of the weights,
sums over 600 rows, by a few more (bound 8e-3).
"""
from typing import List, Tuple

import pytest
import torch
from gpu_testing import record
from mmcv.cnn import Linear
from torch import Tensor, nn

from projects.codetr.models.query_heads.layer_branches import (
    layer_predictions, stackable)

pytestmark = pytest.mark.gpu

LAYERS, IMAGES, QUERIES, DIMS, CLASSES = 6, 2, 300, 256, 80


def branches() -> Tuple[nn.ModuleList, nn.ModuleList]:
    """mmdet's Deformable DETR branches (mmcv's ``Linear``), one per layer
    and one for the encoder proposals, on the GPU."""
    torch.manual_seed(0)
    cls = nn.ModuleList([Linear(DIMS, CLASSES) for _ in range(LAYERS + 1)])
    reg = nn.ModuleList([
        nn.Sequential(
            Linear(DIMS, DIMS), nn.ReLU(), Linear(DIMS, DIMS), nn.ReLU(),
            Linear(DIMS, 4)) for _ in range(LAYERS + 1)
    ])
    return cls.cuda(), reg.cuda()


def run(cls: nn.ModuleList, reg: nn.ModuleList, batched: bool,
        amp: bool) -> Tuple[Tensor, Tensor, List[Tensor]]:
    """Logits, boxes (as float32) and the gradients of a fixed weighted
    sum of them: hidden states, references, every used parameter."""
    torch.manual_seed(1)
    hidden = torch.randn(
        LAYERS, IMAGES, QUERIES, DIMS, device='cuda', requires_grad=True)
    refs = [
        torch.rand(IMAGES, QUERIES, 4, device='cuda', requires_grad=True)
        for _ in range(LAYERS + 1)
    ]
    for p in list(cls.parameters()) + list(reg.parameters()):
        p.grad = None
    with torch.autocast('cuda', dtype=torch.float16, enabled=amp):
        logits, boxes = layer_predictions(
            cls, reg, hidden, refs, eps=1e-5, batched=batched)
    logits, boxes = logits.float(), boxes.float()
    weights = torch.randn_like(logits), torch.randn_like(boxes)
    ((logits * weights[0]).sum() + (boxes * weights[1]).sum()).backward()
    grads = [hidden.grad] + [r.grad for r in refs[:LAYERS]] + [
        p.grad for m in (cls, reg) for p in m.parameters()
        if p.grad is not None
    ]
    return logits.detach(), boxes.detach(), grads


def relative(got: Tensor, want: Tensor) -> float:
    """Largest difference relative to the reference's largest magnitude."""
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize('amp', [False, True])
def test_stacked_branches_give_the_loops_values_on_the_gpu(amp):
    cls, reg = branches()
    assert stackable(cls[:LAYERS]) and stackable(reg[:LAYERS])
    loop = run(cls, reg, batched=False, amp=amp)
    batched = run(cls, reg, batched=True, amp=amp)
    bound = 4e-3 if amp else 1e-5
    logits, boxes = (relative(batched[i], loop[i]) for i in (0, 1))
    assert len(batched[2]) == len(loop[2]) == 1 + LAYERS + 2 * LAYERS * 4
    grads = max(relative(g, w) for g, w in zip(batched[2], loop[2]))
    record(f'layer branches, {"fp16 autocast" if amp else "fp32"}: '
           'batched vs loop, relative to the largest value',
           logits=logits, boxes=boxes, grads=grads, bound=bound,
           grad_bound=2 * bound)
    assert logits <= bound and boxes <= bound
    assert grads <= 2 * bound
