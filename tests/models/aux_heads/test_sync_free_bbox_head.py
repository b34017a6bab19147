"""SyncFreeShared2FCBBoxHead's losses against mmdet's Shared2FCBBoxHead
(the reference, same arguments and inputs): the same classification loss,
accuracy and box loss, and their gradients, within a few units of the last
place (the box loss sums zeros between the same terms), with decoded boxes
(the config's GIoU) and deltas (mmdet's L1), per-class and class-agnostic
regression, with and without positives, in float32 and float64; no host
read, where mmdet's make six (and one more in the backward), and, with the
config's box coder, no tensor made from host data."""
import itertools

import pytest
import torch
from codetr_testing import HostDataCounter, load_config
from mmdet.registry import MODELS

import projects.codetr  # noqa: F401  (registers the head)
from projects.codetr.analysis.host_syncs import count_host_reads

NUM_CLASSES = 3


def heads(reg_decoded_bbox, reg_class_agnostic, device='cpu'):
    """The config's box head, shrunk, and mmdet's with its arguments (and
    mmdet's box coder)."""
    cfg = load_config().model.roi_head.rcnn.bbox_head
    assert cfg['type'] == 'SyncFreeShared2FCBBoxHead'
    cfg = dict(cfg, in_channels=4, fc_out_channels=8, roi_feat_size=2,
               num_classes=NUM_CLASSES, reg_decoded_bbox=reg_decoded_bbox,
               reg_class_agnostic=reg_class_agnostic)
    if not reg_decoded_bbox:  # deltas take mmdet's default L1 loss
        cfg['loss_bbox'] = dict(type='L1Loss', loss_weight=1.0)
    mmdets = dict(cfg, type='Shared2FCBBoxHead',
                  bbox_coder=dict(cfg['bbox_coder'],
                                  type='DeltaXYWHBBoxCoder'))
    return MODELS.build(cfg).to(device), MODELS.build(mmdets).to(device)


def inputs(n, dtype, decoded, agnostic, num_pos, device='cpu', seed=0):
    """Predictions that require gradients and mmdet-style targets: the
    first ``num_pos`` RoIs positive, the rest background with zero box
    targets and weights; some label weights zero."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=gen, dtype=torch.float64)

    xy = rand(n, 2) * 100
    rois = torch.cat([torch.randint(0, 2, (n, 1), generator=gen).double(),
                      xy, xy + 10 + rand(n, 2) * 50], dim=1)
    labels = torch.full((n, ), NUM_CLASSES)
    labels[:num_pos] = torch.randint(0, NUM_CLASSES, (num_pos, ),
                                     generator=gen)
    label_weights = (rand(n) > 0.1).double()
    targets = torch.zeros(n, 4, dtype=torch.float64)
    weights = torch.zeros(n, 4, dtype=torch.float64)
    if decoded:  # absolute boxes near the RoIs
        targets[:num_pos] = rois[:num_pos, 1:] + rand(num_pos, 4) * 8 - 4
    else:
        targets[:num_pos] = torch.randn(num_pos, 4, generator=gen,
                                        dtype=torch.float64)
    weights[:num_pos] = 1
    box_columns = 4 if agnostic else 4 * NUM_CLASSES
    cls_score = torch.randn(n, NUM_CLASSES + 1, generator=gen,
                            dtype=torch.float64)
    bbox_pred = torch.randn(n, box_columns, generator=gen,
                            dtype=torch.float64) * 0.3

    def to(t, grad=False):
        t = t.to(device, dtype if t.is_floating_point() else t.dtype)
        return t.requires_grad_() if grad else t

    return (to(cls_score, True), to(bbox_pred, True), to(rois), to(labels),
            to(label_weights), to(targets), to(weights))


def losses_and_grads(head, args, **kwargs):
    cls_score, bbox_pred = args[:2]
    cls_score.grad = bbox_pred.grad = None
    losses = head.loss(*args, **kwargs)
    sum(value for key, value in losses.items() if 'loss' in key).backward()
    return ({k: v.detach() for k, v in losses.items()},
            [cls_score.grad.clone(), bbox_pred.grad.clone()])


def assert_close_to_rounding(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    bound = 8 * torch.finfo(b.dtype).eps * max(b.abs().max().item(), 1.0)
    torch.testing.assert_close(a, b, rtol=0, atol=bound)


@pytest.mark.parametrize('dtype,decoded,agnostic,num_pos', list(
    itertools.product([torch.float32, torch.float64], [True, False],
                      [False, True], [7, 0])))
def test_mmdets_losses_and_gradients(dtype, decoded, agnostic, num_pos):
    ours, mmdets = heads(decoded, agnostic)
    args = inputs(40, dtype, decoded, agnostic, num_pos)
    mine, my_grads = losses_and_grads(ours, args)
    theirs, their_grads = losses_and_grads(mmdets, args)
    assert mine.keys() == theirs.keys() == {'loss_cls', 'acc', 'loss_bbox'}
    for key in theirs:
        assert_close_to_rounding(mine[key], theirs[key].to(mine[key].dtype))
    for a, b in zip(my_grads, their_grads):
        assert_close_to_rounding(a, b)
    assert (theirs['loss_bbox'] > 0) == (num_pos > 0)


def test_reduction_none_takes_mmdets_code():
    ours, mmdets = heads(True, False)
    args = inputs(30, torch.float64, True, False, 5)
    mine = ours.loss(*args, reduction_override='none')
    theirs = mmdets.loss(*args, reduction_override='none')
    # one box loss per positive, mmdet's shape
    assert mine['loss_bbox'].shape == theirs['loss_bbox'].shape == (5, )
    assert torch.equal(mine['loss_bbox'], theirs['loss_bbox'])
    # the same when the box loss is configured so
    ours.loss_bbox.reduction = mmdets.loss_bbox.reduction = 'none'
    mine, theirs = ours.loss(*args), mmdets.loss(*args)
    assert mine['loss_bbox'].shape == theirs['loss_bbox'].shape == (5, )


@pytest.mark.parametrize('decoded,agnostic',
                         list(itertools.product([True, False], repeat=2)))
def test_no_rois(decoded, agnostic):
    """A batch without proposals or ground truths: mmdet's zero box loss,
    connected to the predictions."""
    ours, mmdets = heads(decoded, agnostic)
    args = inputs(0, torch.float32, decoded, agnostic, 0)
    mine = ours.loss(*args)
    theirs = mmdets.loss(*args)
    assert mine.keys() == theirs.keys()
    assert mine['loss_bbox'] == theirs['loss_bbox'] == 0
    mine['loss_bbox'].backward()
    assert args[1].grad.shape == args[1].shape


def test_no_host_read_where_mmdets_make_several():
    args = inputs(40, torch.float32, True, False, 7)
    ours, mmdets = heads(True, False)
    reads, _ = count_host_reads(lambda: losses_and_grads(ours, args))
    assert sum(reads.values()) == 0, reads
    reads, _ = count_host_reads(lambda: losses_and_grads(mmdets, args))
    # two scalar reads, four boolean selections (and one in the backward)
    assert reads['aten::_local_scalar_dense'] == 2
    assert reads['aten::nonzero'] >= 4


def test_no_tensor_from_host_data_with_the_configs_coder():
    """The decode of the boxes for the GIoU loss: mmdet's coder copies its
    means and stds from the host on every call (on a GPU each copy waits
    for the queued work), the config's once per device and dtype."""
    args = inputs(40, torch.float32, True, False, 7)
    counts = {}
    for name, head in zip(('ours', 'mmdet'), heads(True, False)):
        losses_and_grads(head, args)
        with HostDataCounter() as counter:
            losses_and_grads(head, args)
        counts[name] = counter.count
    assert counts == {'ours': 0, 'mmdet': 2}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_close_to_mmdets_without_synchronisation_on_the_gpu():
    ours, mmdets = heads(True, False, 'cuda')
    args = inputs(1000, torch.float32, True, False, 200, 'cuda')
    theirs, their_grads = losses_and_grads(mmdets, args)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        mine, my_grads = losses_and_grads(ours, args)
    finally:
        torch.cuda.set_sync_debug_mode('default')
    for key in theirs:
        # float32 sums in another order on the GPU's reductions
        torch.testing.assert_close(mine[key], theirs[key], rtol=1e-5,
                                   atol=1e-6)
    for a, b in zip(my_grads, their_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
