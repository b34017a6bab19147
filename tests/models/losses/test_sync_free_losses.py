"""mmdet's focal, sigmoid cross-entropy and L1 losses without host reads
against mmdet's own (the references): on a CPU the same losses and
gradients bit for bit for every input form and reduction (the focal loss
on a GPU: mmcv's kernel's values up to float rounding); on a GPU no
synchronisation, where mmdet's raise under CUDA's sync debug mode (so the
checks can fail)."""
import itertools
import os.path as osp

import pytest
import torch
from codetr_testing import R50_CONFIG, REPO_ROOT, load_config
from mmdet.models.losses import CrossEntropyLoss, FocalLoss, L1Loss

from projects.codetr.models.losses import (SyncFreeCrossEntropyLoss,
                                           SyncFreeFocalLoss, SyncFreeL1Loss)
from projects.codetr.models.precision.any_dtype_heads import \
    AnyDtypeCrossEntropyLoss

NUM_CLASSES = 5
AVG_FACTORS = [None, 7.0, 'tensor']


def scores_and_labels(n, dtype, device='cpu', seed=0):
    """Logits (n, NUM_CLASSES) that require gradients, labels in
    [0, NUM_CLASSES] (NUM_CLASSES: background) and per-row weights with
    zeros."""
    gen = torch.Generator().manual_seed(seed)
    pred = (torch.randn(n, NUM_CLASSES, generator=gen, dtype=torch.float64) *
            3).to(device=device, dtype=dtype).requires_grad_()
    labels = torch.randint(0, NUM_CLASSES + 1, (n, ), generator=gen)
    weight = (torch.rand(n, generator=gen, dtype=torch.float64) > 0.2).to(
        dtype)
    return pred, labels.to(device), weight.to(device)


def loss_and_grad(loss_module, pred, target, **kwargs):
    pred.grad = None
    loss = loss_module(pred, target, **kwargs)
    loss.sum().backward()
    return loss.detach(), pred.grad.clone()


# mmdet refuses an avg_factor with a sum
@pytest.mark.parametrize('dtype,reduction,weighted,avg_factor', [
    case for case in itertools.product([torch.float32, torch.float64],
                                       ['mean', 'sum', 'none'], [False, True],
                                       AVG_FACTORS)
    if case[1] != 'sum' or case[3] is None
])
def test_labels_give_mmdets_loss_bit_for_bit_on_a_cpu(dtype, reduction,
                                                      weighted, avg_factor):
    pred, labels, weight = scores_and_labels(33, dtype)
    if avg_factor == 'tensor':
        avg_factor = torch.tensor(7.0, dtype=dtype)
    kwargs = dict(weight=weight if weighted else None,
                  avg_factor=avg_factor, reduction_override=reduction)
    options = dict(gamma=1.5, alpha=0.3, loss_weight=2.0)
    ours = loss_and_grad(SyncFreeFocalLoss(**options), pred, labels,
                         **kwargs)
    ref = loss_and_grad(FocalLoss(**options), pred, labels, **kwargs)
    for mine, theirs in zip(ours, ref):
        assert mine.dtype == theirs.dtype
        assert torch.equal(mine, theirs)


def test_one_hot_soft_and_activated_inputs_are_mmdets():
    pred, labels, weight = scores_and_labels(20, torch.float64)
    one_hot = torch.nn.functional.one_hot(labels, NUM_CLASSES + 1)[:, :-1]
    soft = one_hot * torch.rand(20, 1, dtype=torch.float64)
    for target in (one_hot, soft):
        ours = loss_and_grad(SyncFreeFocalLoss(), pred, target, weight=weight)
        ref = loss_and_grad(FocalLoss(), pred, target, weight=weight)
        assert all(map(torch.equal, ours, ref))
    probs = pred.detach().sigmoid().requires_grad_()
    ours = loss_and_grad(SyncFreeFocalLoss(activated=True), probs, labels)
    ref = loss_and_grad(FocalLoss(activated=True), probs, labels)
    assert all(map(torch.equal, ours, ref))


def test_empty_batch_and_all_background():
    pred, labels, _ = scores_and_labels(8, torch.float32)
    background = torch.full_like(labels, NUM_CLASSES)
    ours = loss_and_grad(SyncFreeFocalLoss(), pred, background)
    ref = loss_and_grad(FocalLoss(), pred, background)
    assert all(map(torch.equal, ours, ref))
    empty = torch.zeros(0, NUM_CLASSES, requires_grad=True)
    loss = SyncFreeFocalLoss()(empty, labels[:0], reduction_override='sum')
    assert loss.item() == 0


@pytest.mark.parametrize(
    'dtype,num_classes,weighted,ignore_index,avg_factor',
    list(
        itertools.product([torch.float32, torch.float64], [1, 4],
                          [False, True], [None, 3], AVG_FACTORS)))
def test_sigmoid_cross_entropy_is_mmdets_bit_for_bit(
        dtype, num_classes, weighted, ignore_index, avg_factor):
    """Labels in [-1, num_classes + 1]: negatives and ``ignore_index`` are
    invalid rows, ``num_classes`` and beyond set no column. The reference
    is the any-dtype loss the anchor heads build for mmdet's (float32:
    mmdet's functions)."""
    gen = torch.Generator().manual_seed(num_classes)
    pred = torch.randn(40, num_classes, generator=gen,
                       dtype=dtype).requires_grad_()
    labels = torch.randint(-1, num_classes + 2, (40, ), generator=gen)
    weight = torch.rand(40, generator=gen, dtype=dtype) if weighted else None
    if avg_factor == 'tensor':
        avg_factor = torch.tensor(7.0, dtype=dtype)
    options = dict(use_sigmoid=True, loss_weight=3.0,
                   ignore_index=ignore_index)
    kwargs = dict(weight=weight, avg_factor=avg_factor)
    ours = loss_and_grad(SyncFreeCrossEntropyLoss(**options), pred, labels,
                         **kwargs)
    ref = loss_and_grad(AnyDtypeCrossEntropyLoss(**options), pred, labels,
                        **kwargs)
    for mine, theirs in zip(ours, ref):
        assert mine.dtype == theirs.dtype == dtype
        assert torch.equal(mine, theirs)
    if dtype == torch.float32:
        ref = loss_and_grad(CrossEntropyLoss(**options), pred, labels,
                            **kwargs)
        assert all(map(torch.equal, ours, ref))


@pytest.mark.parametrize('options', [
    dict(use_sigmoid=False),
    dict(use_sigmoid=True, avg_non_ignore=True),
    dict(use_sigmoid=True, avg_non_ignore=True, ignore_index=2),
    dict(use_sigmoid=True, ignore_index=1),
])
def test_cross_entropy_forms_left_to_mmdet(options):
    """Softmax, ``avg_non_ignore`` and an ignored class 1 take mmdet's
    code (whose results ours would not reproduce there: with invalid
    labels ``avg_non_ignore`` averages over the valid ones)."""
    pred = torch.randn(12, 3, dtype=torch.float64).requires_grad_()
    labels = torch.arange(12) % 3
    if options['use_sigmoid']:
        labels[::4] = -1  # invalid rows
    ours = loss_and_grad(SyncFreeCrossEntropyLoss(**options), pred, labels)
    ref = loss_and_grad(AnyDtypeCrossEntropyLoss(**options), pred, labels)
    assert all(map(torch.equal, ours, ref))


def test_sigmoid_cross_entropy_on_same_shaped_targets_is_mmdets():
    """ATSS's centerness: (n, ) logits and (n, ) probabilities."""
    pred = torch.randn(30, dtype=torch.float64).requires_grad_()
    target = torch.rand(30, dtype=torch.float64)
    weight = (torch.arange(30) % 3 > 0).double()
    ours = loss_and_grad(SyncFreeCrossEntropyLoss(use_sigmoid=True), pred,
                         target, weight=weight, avg_factor=11.0)
    ref = loss_and_grad(AnyDtypeCrossEntropyLoss(use_sigmoid=True), pred,
                        target, weight=weight, avg_factor=11.0)
    assert all(map(torch.equal, ours, ref))


@pytest.mark.parametrize('dtype,reduction,avg_factor', [
    case for case in itertools.product([torch.float32, torch.float64],
                                       ['mean', 'sum', 'none'], AVG_FACTORS)
    if case[1] != 'sum' or case[2] is None
])
def test_l1_is_mmdets_bit_for_bit(dtype, reduction, avg_factor):
    gen = torch.Generator().manual_seed(3)
    pred = torch.randn(25, 4, generator=gen, dtype=dtype).requires_grad_()
    target = torch.randn(25, 4, generator=gen, dtype=dtype)
    weight = (torch.rand(25, 4, generator=gen) > 0.5).to(dtype)
    if avg_factor == 'tensor':
        avg_factor = torch.tensor(7.0, dtype=dtype)
    kwargs = dict(weight=weight, avg_factor=avg_factor,
                  reduction_override=reduction)
    ours = loss_and_grad(SyncFreeL1Loss(loss_weight=5.0), pred, target,
                         **kwargs)
    ref = loss_and_grad(L1Loss(loss_weight=5.0), pred, target, **kwargs)
    assert all(map(torch.equal, ours, ref))


@pytest.mark.parametrize('reduction', ['mean', 'sum', 'none'])
def test_l1_without_positive_weights_or_boxes_is_zero(reduction):
    """mmdet returns a 0-d zero, unweighted and unreduced; ours the same
    zero (element-wise for 'none'), with the same (zero) gradient."""
    pred = torch.randn(6, 4, dtype=torch.float64).requires_grad_()
    target = torch.randn(6, 4, dtype=torch.float64)
    kwargs = dict(weight=torch.zeros(6, 4, dtype=torch.float64),
                  avg_factor=2.0 if reduction == 'mean' else None,
                  reduction_override=reduction)
    ours = loss_and_grad(SyncFreeL1Loss(loss_weight=5.0), pred, target,
                         **kwargs)
    ref = loss_and_grad(L1Loss(loss_weight=5.0), pred, target, **kwargs)
    assert ref[0].dim() == 0 and ref[0] == 0
    assert ours[0].shape == (pred.shape if reduction == 'none' else ())
    assert not ours[0].any()
    assert torch.equal(ours[1], ref[1]) and not ours[1].any()
    empty = torch.zeros(0, 4, requires_grad=True)
    loss = SyncFreeL1Loss()(empty, empty.detach(), torch.zeros(0, 4))
    assert loss.dim() == 0 and loss == 0
    loss.backward()


def test_the_zoo_configs_take_them_where_mmdet_reads():
    """ATSS and the Co-Deformable-DETR query head classify with the focal
    loss (their FocalLoss takes labels), the RPN with the cross-entropy
    (ATSS's centerness has no labels, the RoI head is softmax), the query
    heads and the RPN regress with the L1 loss."""
    codino = osp.join(REPO_ROOT, 'configs', 'co_dino_5scale_r50_1x_coco.py')
    for path in (R50_CONFIG, codino):
        model = load_config(path).model
        assert model.bbox_head.atss.loss_cls.type == 'SyncFreeFocalLoss'
        assert model.rpn_head.loss_cls.type == 'SyncFreeCrossEntropyLoss'
        assert model.rpn_head.loss_bbox.type == 'SyncFreeL1Loss'
        assert model.query_head.loss_bbox.type == 'SyncFreeL1Loss'
    model = load_config(R50_CONFIG).model
    assert model.query_head.loss_cls.type == 'SyncFreeFocalLoss'


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_close_to_mmcvs_kernel_without_synchronisation_on_the_gpu():
    pred, labels, weight = scores_and_labels(4000, torch.float32, 'cuda')
    kwargs = dict(weight=weight, avg_factor=torch.tensor(37.0, device='cuda'))
    ref = loss_and_grad(FocalLoss(), pred, labels, **kwargs)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        ours = loss_and_grad(SyncFreeFocalLoss(), pred, labels, **kwargs)
        with pytest.raises(RuntimeError, match='synchroniz'):
            FocalLoss()(pred, labels, **kwargs)
    finally:
        torch.cuda.set_sync_debug_mode('default')
    # mmcv's kernel and PyTorch's ops evaluate the same formula in float32
    for mine, theirs in zip(ours, ref):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-8)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cross_entropy_and_l1_without_synchronisation_on_the_gpu():
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(500, 1, generator=gen).cuda().requires_grad_()
    labels = torch.randint(0, 2, (500, ), generator=gen).cuda()
    boxes = torch.randn(500, 4, generator=gen).cuda().requires_grad_()
    target = torch.randn(500, 4, generator=gen).cuda()
    weight = (torch.rand(500, 4, generator=gen) > 0.5).float().cuda()
    avg = torch.tensor(9.0, device='cuda')
    losses = {
        'ce': (SyncFreeCrossEntropyLoss(use_sigmoid=True),
               CrossEntropyLoss(use_sigmoid=True), pred, labels, None),
        'l1': (SyncFreeL1Loss(), L1Loss(), boxes, target, weight),
    }
    for name, (ours, theirs, x, y, w) in losses.items():
        ref = loss_and_grad(theirs, x, y, weight=w, avg_factor=avg)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode('error')
        try:
            mine = loss_and_grad(ours, x, y, weight=w, avg_factor=avg)
            with pytest.raises(RuntimeError, match='synchroniz'):
                theirs(x, y, weight=w, avg_factor=avg)
        finally:
            torch.cuda.set_sync_debug_mode('default')
        for a, b in zip(mine, ref):
            assert torch.equal(a, b), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_focal_loss_stays_finite_in_fp16_where_mmcvs_half_kernel_does_not():
    """ATSS under AMP gives the focal loss fp16 logits. mmcv's half kernel
    bounds log(1 - p) at a FLT_MIN that rounds to 0 in fp16 and returns
    NaN for logits of moderate size; ours stays finite and close to its own
    float32 value on the same logits."""
    gen = torch.Generator(device='cuda').manual_seed(0)
    logits = torch.randn(20000, 80, device='cuda', generator=gen) * 4 - 4
    labels = torch.randint(0, 81, (20000, ), device='cuda', generator=gen)
    kwargs = dict(weight=torch.ones(20000, device='cuda'), avg_factor=100.0)
    half = logits.half().requires_grad_()
    single = half.detach().float().requires_grad_()
    loss16, grad16 = loss_and_grad(SyncFreeFocalLoss(), half, labels,
                                   **kwargs)
    loss32, grad32 = loss_and_grad(SyncFreeFocalLoss(), single, labels,
                                   **kwargs)
    assert torch.isfinite(loss16) and torch.isfinite(grad16).all()
    torch.testing.assert_close(loss16.float(), loss32, rtol=1e-2, atol=0)
    torch.testing.assert_close(
        grad16.float(), grad32, rtol=1e-2, atol=1e-3 * grad32.abs().max())
    assert not torch.isfinite(FocalLoss()(half.detach(), labels, **kwargs))
