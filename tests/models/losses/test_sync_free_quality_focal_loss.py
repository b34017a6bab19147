"""mmdet's QualityFocalLoss without its host read against mmdet's own (the
reference): the same losses and gradients (logits, probabilities and
scores) for label and dense targets, every reduction, float32 and float64,
within a few units of the last place (the positives are computed inside the
dense tensor instead of on a gathered copy); no op that waits on a GPU,
where mmdet's makes one (so the check can fail)."""
import itertools
import os.path as osp

import pytest
import torch
from codetr_testing import REPO_ROOT, load_config
from mmdet.models.losses import QualityFocalLoss

from projects.codetr.analysis.host_syncs import count_host_reads
from projects.codetr.models.losses import SyncFreeQualityFocalLoss

NUM_CLASSES = 6


def inputs(n, dtype, device='cpu', seed=0):
    """Logits (n, NUM_CLASSES) and scores that require gradients; labels
    in [-1, NUM_CLASSES + 1] (-1 and beyond NUM_CLASSES - 1: background),
    scores in [0, 1] with exact zeros; per-row weights with zeros."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, NUM_CLASSES, generator=gen, dtype=torch.float64)
    labels = torch.randint(-1, NUM_CLASSES + 2, (n, ), generator=gen)
    scores = torch.rand(n, generator=gen, dtype=torch.float64)
    scores[::4] = 0
    weight = (torch.rand(n, generator=gen, dtype=torch.float64) > 0.2)
    return ((logits * 4).to(device, dtype).requires_grad_(),
            labels.to(device),
            scores.to(device, dtype).requires_grad_(),
            weight.to(device, dtype))


def run(loss_module, pred, target, leaves, **kwargs):
    """The loss and the gradients of ``leaves`` of its sum."""
    for leaf in leaves:
        leaf.grad = None
    loss = loss_module(pred, target, **kwargs)
    loss.sum().backward()
    return [loss.detach()] + [leaf.grad.clone() for leaf in leaves]


def assert_close_to_rounding(mine, theirs):
    """Within 8 units of the dtype's last place of each tensor's largest
    magnitude: another rounding of the same formula, nothing more."""
    for a, b in zip(mine, theirs):
        assert a.dtype == b.dtype and a.shape == b.shape
        bound = 8 * torch.finfo(b.dtype).eps * max(b.abs().max().item(), 1.0)
        torch.testing.assert_close(a, b, rtol=0, atol=bound)


@pytest.mark.parametrize('dtype,activated,reduction,weighted,avg_factor', [
    case for case in itertools.product(
        [torch.float32, torch.float64], [False, True],
        ['mean', 'sum', 'none'], [False, True], [None, 7.0, 'tensor'])
    if case[2] != 'sum' or case[4] is None  # mmdet refuses that pair
])
def test_label_targets_give_mmdets_loss(dtype, activated, reduction,
                                        weighted, avg_factor):
    logits, labels, scores, weight = inputs(41, dtype)
    pred = logits.detach().sigmoid().requires_grad_() if activated \
        else logits
    if avg_factor == 'tensor':
        avg_factor = torch.tensor(7.0, dtype=dtype)
    kwargs = dict(weight=weight if weighted else None,
                  avg_factor=avg_factor, reduction_override=reduction)
    options = dict(beta=2.0, loss_weight=1.5, activated=activated)
    mine = run(SyncFreeQualityFocalLoss(**options), pred, (labels, scores),
               [pred, scores], **kwargs)
    theirs = run(QualityFocalLoss(**options), pred, (labels, scores),
                 [pred, scores], **kwargs)
    assert_close_to_rounding(mine, theirs)
    # the scores take part: their gradient is not zero
    assert theirs[2].abs().sum() > 0


@pytest.mark.parametrize('activated', [False, True])
def test_dense_targets_give_mmdets_loss(activated):
    logits, labels, scores, weight = inputs(30, torch.float64, seed=1)
    pred = logits.detach().sigmoid().requires_grad_() if activated \
        else logits
    dense = torch.zeros(30, NUM_CLASSES, dtype=torch.float64)
    rows = (labels >= 0) & (labels < NUM_CLASSES)
    dense[rows, labels[rows]] = scores.detach()[rows]
    # a target that requires a gradient: mmdet's negatives take a
    # constant 0, so its zero entries get none
    dense.requires_grad_()
    options = dict(beta=1.5, activated=activated)
    mine = run(SyncFreeQualityFocalLoss(**options), pred, dense,
               [pred, dense], weight=weight)
    theirs = run(QualityFocalLoss(**options), pred, dense, [pred, dense],
                 weight=weight)
    assert_close_to_rounding(mine, theirs)
    assert theirs[2][dense.detach() != 0].abs().sum() > 0


def test_all_background_and_empty_inputs():
    logits, labels, scores, _ = inputs(9, torch.float32, seed=2)
    background = torch.full_like(labels, NUM_CLASSES)
    mine = run(SyncFreeQualityFocalLoss(), logits, (background, scores),
               [logits])
    theirs = run(QualityFocalLoss(), logits, (background, scores), [logits])
    assert_close_to_rounding(mine, theirs)
    empty = torch.zeros(0, NUM_CLASSES, requires_grad=True)
    loss = SyncFreeQualityFocalLoss()(empty, (labels[:0], scores[:0]),
                                      reduction_override='sum')
    loss.backward()
    assert loss.item() == 0 and empty.grad.shape == (0, NUM_CLASSES)


def test_no_host_read_where_mmdets_makes_one():
    logits, labels, scores, weight = inputs(25, torch.float32, seed=3)
    for loss_module, expected in ((SyncFreeQualityFocalLoss(), {}),
                                  (QualityFocalLoss(), {
                                      'aten::nonzero': 1
                                  })):

        def step():
            loss_module(logits, (labels, scores), weight=weight,
                        avg_factor=torch.tensor(5.0)).backward()

        reads, _ = count_host_reads(step)
        assert reads == expected, type(loss_module).__name__


def test_the_co_dino_configs_take_it():
    path = osp.join(REPO_ROOT, 'configs', 'co_dino_5scale_r50_1x_coco.py')
    cfg = load_config(path)
    assert cfg.model.query_head.loss_cls.type == 'SyncFreeQualityFocalLoss'


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_close_to_mmdets_without_synchronisation_on_the_gpu():
    logits, labels, scores, weight = inputs(5000, torch.float32, 'cuda')
    kwargs = dict(weight=weight, avg_factor=torch.tensor(37.0,
                                                         device='cuda'))
    target = (labels, scores)
    theirs = run(QualityFocalLoss(), logits, target, [logits, scores],
                 **kwargs)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        mine = run(SyncFreeQualityFocalLoss(), logits, target,
                   [logits, scores], **kwargs)
        with pytest.raises(RuntimeError, match='synchroniz'):
            QualityFocalLoss()(logits, target, **kwargs)
    finally:
        torch.cuda.set_sync_debug_mode('default')
    assert_close_to_rounding(mine, theirs)
