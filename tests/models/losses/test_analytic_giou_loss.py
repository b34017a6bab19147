"""AnalyticGIoULoss (projects/codetr/models/losses): mmdet's GIoULoss, value
for value, with the gradient in closed form and no read of the device.

References: mmdet's ``GIoULoss`` (autograd through ``bbox_overlaps``) for
values and gradients, including autograd's conventions at ties and at the
clamps; finite differences (``gradcheck``) away from them; a training step
of a tiny K=2 model with one loss and with the other.
"""
import copy

import pytest
import torch
from codetr_testing import build_model, make_batch, tiny_model_cfg
from mmdet.models.losses import GIoULoss
from torch.utils._python_dispatch import TorchDispatchMode

from projects.codetr.models.losses import AnalyticGIoULoss
from projects.codetr.models.losses.analytic_giou_loss import AlignedGIoU


def boxes_with_kinks(dtype: torch.dtype, n: int = 120, seed: int = 0):
    """Random (pred, target) pixel boxes, and rows at every kink of the
    GIoU: equal boxes, shared edges, touching and disjoint boxes,
    zero-area predictions and targets, a prediction inside its target."""
    gen = torch.Generator().manual_seed(seed)

    def boxes():
        xy = torch.rand(n, 2, generator=gen, dtype=dtype) * 100
        return torch.cat(
            [xy, xy + torch.rand(n, 2, generator=gen, dtype=dtype) * 60], 1)

    pred, target = boxes(), boxes()
    pred[:10] = target[:10]  # equal: every max and min ties
    pred[10:20, 0] = target[10:20, 0]  # one shared edge
    pred[20:30, 2:] = target[20:30, 2:]
    pred[30:40, 0] = target[30:40, 2]  # touching: zero-width intersection
    pred[40:50] = target[40:50] + 500  # disjoint
    pred[50:60, 2] = pred[50:60, 0]  # zero-width prediction
    target[60:70, 3] = target[60:70, 1]  # zero-height target
    pred[70:80] = target[70:80] + torch.tensor([5, 5, -5, -5], dtype=dtype)
    pred[80:85] = 0  # empty union: the eps bounds bind
    target[80:85] = 0
    target[85:90, 3] = target[85:90, 1]  # a segment, the enclosing area 0
    pred[85:90] = target[85:90]
    weight = torch.rand(n, generator=gen, dtype=dtype)
    weight[::9] = 0
    return pred, target, weight


def loss_and_grad(loss_cls, pred, target, **kwargs):
    pred = pred.clone().requires_grad_()
    loss = loss_cls(loss_weight=2.0)(pred, target, **kwargs)
    loss.sum().backward()
    return loss.detach(), pred.grad


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('case', ['weight', 'box_weight', 'none', 'sum'])
def test_values_equal_mmdets_and_gradients_agree_at_every_kink(dtype, case):
    pred, target, weight = boxes_with_kinks(dtype)
    kwargs = dict(
        weight=dict(weight=weight, avg_factor=37.0),
        box_weight=dict(weight=weight[:, None].expand(-1, 4).contiguous()),
        none=dict(reduction_override='none'),
        sum=dict(weight=weight, reduction_override='sum'))[case]
    ours, ours_grad = loss_and_grad(AnalyticGIoULoss, pred, target, **kwargs)
    ref, ref_grad = loss_and_grad(GIoULoss, pred, target, **kwargs)
    assert torch.equal(ours, ref)  # the same operations in the same order
    assert_close_per_box(ours_grad, ref_grad, dtype)


def assert_close_per_box(ours, ref, dtype):
    """Equal to rounding: within ``rtol`` of the largest gradient of each
    box (a segment's are ~1e6 times an ordinary box's), and of the median
    box's where a box's own gradient is a near-cancellation of terms of
    that size (equal boxes: exactly 0 against ~1e-19)."""
    rtol = dict({torch.float32: 1e-5, torch.float64: 1e-12})[dtype]
    per_box = ref.abs().amax(-1, keepdim=True)
    scale = per_box.clamp(min=float(per_box.median()))
    bad = (ours - ref).abs() > rtol * scale
    assert not bad.any(), (bad.nonzero()[:5], ours[bad][:5], ref[bad][:5])


def test_ties_split_the_gradient_as_autograd_does():
    # pred's x1 ties target's x1: max and min each pass half to pred
    pred = torch.tensor([[10., 10., 50., 40.]], dtype=torch.float64)
    target = torch.tensor([[10., 20., 60., 50.]], dtype=torch.float64)
    ours = loss_and_grad(AnalyticGIoULoss, pred, target)[1]
    ref = loss_and_grad(GIoULoss, pred, target)[1]
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-15)
    # a derivative that takes the whole gradient from either side differs
    nudged = loss_and_grad(GIoULoss, pred + torch.tensor([[1e-9, 0, 0, 0]],
                                                         dtype=torch.float64),
                           target)[1]
    assert not torch.allclose(ours[0, 0], nudged[0, 0], rtol=1e-3)


def test_gradient_matches_finite_differences_away_from_kinks():
    gen = torch.Generator().manual_seed(3)
    xy = torch.rand(2, 6, 2, generator=gen, dtype=torch.float64)
    pred = torch.cat([xy, xy + 0.3 + torch.rand(2, 6, 2, generator=gen,
                                                dtype=torch.float64)], -1)
    target = pred.detach() + 0.1 * torch.randn(
        2, 6, 4, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda p: AlignedGIoU.apply(p, target, 1e-6),
        (pred.requires_grad_(), ))


def test_zero_weights_empty_inputs_and_a_target_with_gradient():
    pred, target, _ = boxes_with_kinks(torch.float64, n=90)
    zero = torch.zeros(90, dtype=torch.float64)
    for loss_cls in (AnalyticGIoULoss, GIoULoss):
        loss, grad = loss_and_grad(loss_cls, pred, target, weight=zero)
        assert loss.item() == 0 and not grad.any()
        loss, grad = loss_and_grad(loss_cls, pred[:0], target[:0],
                                   weight=zero[:0])
        assert loss.item() == 0 and grad.shape == (0, 4)
    # a target that needs a gradient takes mmdet's computation
    tgt = target.clone().requires_grad_()
    AnalyticGIoULoss()(pred, tgt).backward()
    ref = target.clone().requires_grad_()
    GIoULoss()(pred, ref).backward()
    assert torch.equal(tgt.grad, ref.grad)


def test_ties_at_the_eps_bounds_split_the_gradient():
    # union and enclosing area exactly eps (powers of two: exact sums)
    eps = 2.0**-20
    side = 2.0**-10
    pred = torch.tensor([[0., 0., side, side], [0., 0., side, side / 2]],
                        dtype=torch.float64)
    target = torch.tensor([[0., 0., side, side], [0., side / 2, side, side]],
                          dtype=torch.float64)
    grads = [
        loss_and_grad(lambda **kw: cls(eps=eps, **kw), pred, target)[1]
        for cls in (AnalyticGIoULoss, GIoULoss)
    ]
    assert grads[1].abs().max() > 0
    assert_close_per_box(grads[0], grads[1], torch.float64)


@pytest.mark.parametrize('layout', ['batched', 'strided', 'mean'])
def test_batch_dimensions_strides_and_the_plain_mean(layout):
    pred, target, _ = boxes_with_kinks(torch.float64, n=60, seed=5)
    kwargs = {}
    if layout == 'batched':  # (B, n, 4), reduction 'none'
        pred, target = pred.view(3, 20, 4), target.view(3, 20, 4)
        kwargs = dict(reduction_override='none')
    elif layout == 'strided':  # every other box of a larger tensor
        pred = torch.stack([pred, pred], 1)[:, 0]
        target = torch.stack([target, target], 1)[:, 1]
        assert not pred.is_contiguous()
    ours, ours_grad = loss_and_grad(AnalyticGIoULoss, pred, target, **kwargs)
    ref, ref_grad = loss_and_grad(GIoULoss, pred, target, **kwargs)
    assert torch.equal(ours, ref)
    assert_close_per_box(ours_grad, ref_grad, torch.float64)


@pytest.mark.parametrize('target_dtype', [torch.float16, torch.float32])
def test_fp16_boxes_are_computed_in_fp32_as_mmdet_does(target_dtype):
    # 300 x 300 px predictions: their areas overflow fp16 (65504); the
    # targets, 100 x 100 px inside them, do not
    gen = torch.Generator().manual_seed(4)
    xy = torch.rand(50, 2, generator=gen) * 200
    pred = torch.cat([xy, xy + 300], 1).half()
    inner = xy + 100 + torch.rand(50, 2, generator=gen) * 50
    target = torch.cat([inner, inner + 100], 1).to(target_dtype)
    weight = torch.rand(50, generator=gen).half()
    ours, ours_grad = loss_and_grad(AnalyticGIoULoss, pred, target,
                                    weight=weight, avg_factor=7.0)
    ref, ref_grad = loss_and_grad(GIoULoss, pred, target, weight=weight,
                                  avg_factor=7.0)
    assert ours.dtype == ref.dtype and torch.equal(ours, ref)
    assert torch.isfinite(ref_grad).all() and torch.isfinite(ours_grad).all()
    torch.testing.assert_close(ours_grad, ref_grad, rtol=2e-3, atol=1e-7)


def test_all_zero_weights_with_reduction_none_give_zeros_per_box():
    # documented difference: mmdet returns a 0-d zero without computing
    pred, target, _ = boxes_with_kinks(torch.float64, n=10)
    zero = torch.zeros(10, dtype=torch.float64)
    ours = AnalyticGIoULoss()(pred, target, zero, reduction_override='none')
    ref = GIoULoss()(pred, target, zero, reduction_override='none')
    assert ours.shape == (10, ) and not ours.any()
    assert ref.shape == () and ref.item() == 0


def test_a_second_derivative_is_refused_not_wrong():
    pred, target, _ = boxes_with_kinks(torch.float64, n=10)
    pred = pred.requires_grad_()
    loss = AnalyticGIoULoss()(pred, target)
    (grad, ) = torch.autograd.grad(loss, pred, create_graph=True)
    with pytest.raises(RuntimeError):
        grad.sum().backward()


class ScalarReads(TorchDispatchMode):
    """Counts the operations that read a value back to the host."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in ('_local_scalar_dense',
                                            'is_nonzero', 'item'):
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_reads_nothing_from_the_device_where_mmdets_reads():
    pred, target, weight = boxes_with_kinks(torch.float32)
    counts = {}
    for loss_cls in (AnalyticGIoULoss, GIoULoss):
        with ScalarReads() as reads:
            loss_and_grad(loss_cls, pred, target, weight=weight,
                          avg_factor=3.0)
        counts[loss_cls] = reads.count
    assert counts[AnalyticGIoULoss] == 0
    assert counts[GIoULoss] >= 1  # its zero-weight check


def swap_giou_type(cfg, old: str, new: str) -> int:
    """Every loss of type ``old`` in ``cfg`` made one of type ``new``; the
    number replaced."""
    count = 0
    if isinstance(cfg, dict):
        if cfg.get('type') == old:
            cfg['type'] = new
            count += 1
        count += sum(swap_giou_type(v, old, new) for v in cfg.values())
    elif isinstance(cfg, (list, tuple)):
        count += sum(swap_giou_type(v, old, new) for v in cfg)
    return count


def test_a_k2_training_step_is_mmdets_to_rounding():
    """The configs' ``AnalyticGIoULoss`` (the query head's, the RoI head's
    and ATSS's) against mmdet's ``GIoULoss`` in their place."""
    base = tiny_model_cfg()
    results = []
    for analytic in (False, True):
        cfg = copy.deepcopy(base)
        if not analytic:
            assert swap_giou_type(cfg, 'AnalyticGIoULoss', 'GIoULoss') == 3
        model = build_model(cfg).double().train()
        inputs, samples = make_batch(model)
        for sample in samples:
            sample.gt_instances.bboxes = sample.gt_instances.bboxes.double()
        torch.manual_seed(1)  # the RPN's and RoI head's sampling
        losses = model.loss(inputs.double(), samples)
        total, _ = model.parse_losses(losses)
        total.backward()
        results.append((losses, {
            name: p.grad
            for name, p in model.named_parameters() if p.grad is not None
        }))
    (losses, grads), (losses_a, grads_a) = results
    assert losses.keys() == losses_a.keys()
    for key in losses:
        assert torch.equal(torch.as_tensor(losses[key]),
                           torch.as_tensor(losses_a[key])), key
    assert grads.keys() == grads_a.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grads_a[name], grad, rtol=1e-10,
                                   atol=1e-12 * grad.abs().max(), msg=name)
