"""Sync-free targets of the auxiliary heads against mmdet's (the reference).

SyncFreeMaxIoUAssigner against mmdet's MaxIoUAssigner; CoATSSHead's
per-level anchor counts against ATSSHead's.

The assignment must be mmdet's tensor for tensor, including ties (equal
IoUs, a prior that is the best match of several truths), ignored priors,
the tuple negative threshold and empty inputs; and it must not read
anything back from the device, which mmdet's does (the counter is checked
on mmdet's assigner too, so it can fail).
"""
import itertools

import pytest
import torch
from codetr_testing import WaitCounter
from mmdet.models.task_modules import MaxIoUAssigner
from mmengine.structures import InstanceData

import projects.codetr  # noqa: F401  (registers the assigner)
from projects.codetr.models.task_modules.sync_free_max_iou_assigner import \
    SyncFreeMaxIoUAssigner

SETTINGS = [
    dict(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
         match_low_quality=True),  # Co-DETR's RPN
    dict(pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5,
         match_low_quality=False),  # Co-DETR's RoI head
    dict(pos_iou_thr=0.5, neg_iou_thr=(0.1, 0.4), min_pos_iou=0.2,
         match_low_quality=True, gt_max_assign_all=False),
    dict(pos_iou_thr=0.6, neg_iou_thr=0.6, min_pos_iou=0.0,
         match_low_quality=True),
]


def tied_overlaps(num_gts: int, num_priors: int, seed: int) -> torch.Tensor:
    """IoUs on a coarse grid, so that equal values (ties) are frequent; some
    priors marked -1 (overlapping an ignored box) and some exactly 0."""
    g = torch.Generator().manual_seed(seed)
    overlaps = torch.randint(0, 11, (num_gts, num_priors), generator=g) / 10
    ignored = torch.rand(num_priors, generator=g) < 0.1
    overlaps[:, ignored] = -1
    return overlaps


def assert_same(ours, ref) -> None:
    assert ours.num_gts == ref.num_gts
    for name in ('gt_inds', 'max_overlaps', 'labels'):
        a, b = getattr(ours, name), getattr(ref, name)
        assert a.dtype == b.dtype, name
        assert torch.equal(a, b), name


@pytest.mark.parametrize('setting,seed', list(itertools.product(
    range(len(SETTINGS)), range(4))))
def test_equal_to_mmdet_on_tied_overlaps(setting, seed):
    cfg = SETTINGS[setting]
    num_gts = (1, 3, 7, 12)[seed]
    overlaps = tied_overlaps(num_gts, 300, seed)
    labels = torch.randint(0, 80, (num_gts, ),
                           generator=torch.Generator().manual_seed(seed))
    ref = MaxIoUAssigner(**cfg).assign_wrt_overlaps(overlaps.clone(), labels)
    ours = SyncFreeMaxIoUAssigner(**cfg).assign_wrt_overlaps(
        overlaps.clone(), labels)
    assert_same(ours, ref)
    # the cases the rewrite must get right do occur in this data
    if cfg['match_low_quality'] and cfg.get('gt_max_assign_all', True):
        best = overlaps == overlaps.max(dim=1, keepdim=True).values
        assert (best.sum(1) > 1).any(), 'no tied best prior in the data'


def test_a_prior_claimed_by_several_truths_goes_to_the_last():
    # prior 0 is the best (0.4) of both truths: mmdet's loop leaves truth 2
    overlaps = torch.tensor([[0.4, 0.1, 0.0], [0.4, 0.2, 0.35]])
    labels = torch.tensor([3, 5])
    for cfg in (dict(gt_max_assign_all=True), dict(gt_max_assign_all=False)):
        kwargs = dict(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                      **cfg)
        ref = MaxIoUAssigner(**kwargs).assign_wrt_overlaps(overlaps, labels)
        ours = SyncFreeMaxIoUAssigner(**kwargs).assign_wrt_overlaps(
            overlaps, labels)
        assert_same(ours, ref)
        assert ours.gt_inds.tolist() == [2, 0, -1]  # 0.35: between thrs
        assert ours.labels.tolist() == [5, -1, -1]


@pytest.mark.parametrize('num_gts,num_priors', [(0, 20), (4, 0), (0, 0)])
def test_empty_inputs(num_gts, num_priors):
    cfg = SETTINGS[0]
    overlaps = torch.rand(num_gts, num_priors)
    labels = torch.zeros(num_gts, dtype=torch.long)
    ref = MaxIoUAssigner(**cfg).assign_wrt_overlaps(overlaps, labels)
    ours = SyncFreeMaxIoUAssigner(**cfg).assign_wrt_overlaps(overlaps, labels)
    assert_same(ours, ref)


def test_assign_on_boxes_with_ignored_boxes():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(500, 2, generator=g) * 200
    priors = torch.cat([xy, xy + 8 + torch.rand(500, 2, generator=g) * 40],
                       1)
    gxy = torch.rand(9, 2, generator=g) * 150
    gts = InstanceData(
        bboxes=torch.cat([gxy, gxy + 10 + torch.rand(9, 2, generator=g) * 60],
                         1),
        labels=torch.randint(0, 80, (9, ), generator=g))
    ignore = InstanceData(bboxes=torch.tensor([[0., 0., 60., 60.]]))
    cfg = dict(SETTINGS[0], ignore_iof_thr=0.5)
    pred = InstanceData(priors=priors)
    ref = MaxIoUAssigner(**cfg).assign(pred, gts, ignore)
    ours = SyncFreeMaxIoUAssigner(**cfg).assign(pred, gts, ignore)
    assert_same(ours, ref)
    assert (ours.gt_inds == -1).any() and (ours.gt_inds > 0).any()


def test_no_reads_from_the_device():
    cfg = SETTINGS[0]
    overlaps = tied_overlaps(10, 400, 0)
    labels = torch.arange(10)
    counters = {}
    for name, assigner in (('mmdet', MaxIoUAssigner(**cfg)),
                           ('ours', SyncFreeMaxIoUAssigner(**cfg))):
        with WaitCounter() as counter:
            assigner.assign_wrt_overlaps(overlaps, labels)
        counters[name] = counter.waits
    # mmdet's: the low-quality loop's comparison per truth and the
    # positives' nonzero (its boolean-mask writes are one more wait each on
    # a GPU; the CPU does not dispatch them as nonzero)
    assert len(counters['mmdet']) >= 10 + 1, counters['mmdet']
    assert counters['ours'] == []


def test_configs_use_it():
    from mmengine.config import Config
    for name in ('co_deformable_detr_r50.py', 'co_dino_5scale_r50.py'):
        cfg = Config.fromfile(f'configs/_base_/{name}')
        assert cfg.model.rpn_head.train_cfg.assigner.type == \
            'SyncFreeMaxIoUAssigner'
        assert cfg.model.roi_head.rcnn.train_cfg.assigner.type == \
            'SyncFreeMaxIoUAssigner'


def test_atss_level_counts_equal_mmdet_with_one_read():
    from mmdet.models.dense_heads import ATSSHead

    from projects.codetr.models.aux_heads import CoATSSHead
    cfg = dict(num_classes=3, in_channels=32, feat_channels=32,
               stacked_convs=1, reg_decoded_bbox=True,
               anchor_generator=dict(type='AnchorGenerator', ratios=[1.0],
                                     octave_base_scale=8,
                                     scales_per_octave=1,
                                     strides=[8, 16, 32]))
    ours, ref = CoATSSHead(**cfg), ATSSHead(**cfg)
    num_level_anchors = [120, 30, 8]
    flags = torch.rand(sum(num_level_anchors),
                       generator=torch.Generator().manual_seed(0)) < 0.7
    flags[120:150] = False  # a level without a valid anchor
    with WaitCounter() as ref_counter:
        expected = ref.get_num_level_anchors_inside(num_level_anchors, flags)
    with WaitCounter() as counter:
        counts = ours.get_num_level_anchors_inside(num_level_anchors, flags)
    assert counts == expected and counts[1] == 0
    # mmdet reads once per level; one transfer here (tolist of a CPU
    # tensor is not even dispatched: 0 counted, a device copy on a GPU)
    assert len(ref_counter.waits) == len(num_level_anchors)
    assert len(counter.waits) <= 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_no_synchronisation_on_the_gpu():
    """On the device itself: the same assignment, and CUDA's sync debug
    mode (which raises on every host-device synchronisation) passes ours
    and stops mmdet's."""
    cfg = SETTINGS[0]
    overlaps = tied_overlaps(10, 4000, 1).cuda()
    labels = torch.arange(10).cuda()
    ref = MaxIoUAssigner(**cfg).assign_wrt_overlaps(overlaps, labels)
    ours = SyncFreeMaxIoUAssigner(**cfg)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        result = ours.assign_wrt_overlaps(overlaps, labels)
        with pytest.raises(RuntimeError, match='synchroniz'):
            MaxIoUAssigner(**cfg).assign_wrt_overlaps(overlaps, labels)
    finally:
        torch.cuda.set_sync_debug_mode('default')
    assert_same(result, ref)


@pytest.mark.parametrize('neg_iou_thr', [1, 0.4, (0.1, 0.4)])
def test_negative_threshold_types_as_mmdet(neg_iou_thr):
    # mmdet assigns negatives only for a float or a tuple (an int: none)
    overlaps = torch.tensor([[0.2, 0.35, 0.9], [0.05, 0.5, 0.1]])
    labels = torch.tensor([1, 2])
    cfg = dict(pos_iou_thr=0.7, neg_iou_thr=neg_iou_thr, min_pos_iou=0.3)
    ref = MaxIoUAssigner(**cfg).assign_wrt_overlaps(overlaps, labels)
    ours = SyncFreeMaxIoUAssigner(**cfg).assign_wrt_overlaps(overlaps, labels)
    assert_same(ours, ref)
    assert (ours.gt_inds == 0).any() == (not isinstance(neg_iou_thr, int))
