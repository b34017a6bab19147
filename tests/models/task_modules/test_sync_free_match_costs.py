"""The Hungarian assigner's box match costs without host copies against
mmdet's ``BBoxL1Cost`` and ``IoUCost`` (the references): the same costs
bit for bit for both box formats, both IoU modes and every dtype, and no
tensor made from pageable host data (mmdet's make one per call, so the
counts can fail); the configs' assigners take them."""
import itertools

import pytest
import torch
from codetr_testing import HostDataCounter, load_config
from mmdet.models.task_modules.assigners import BBoxL1Cost, IoUCost
from mmengine.structures import InstanceData

from projects.codetr.models import device_copies
from projects.codetr.models.task_modules import (SyncFreeBBoxL1Cost,
                                                 SyncFreeIoUCost)
from projects.codetr.models.task_modules import \
    sync_free_match_costs as match_costs

META = dict(img_shape=(90, 120))


def instances(n, seed, dtype):
    """Random (x1, y1, x2, y2) boxes in pixels, with a degenerate one."""
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 80
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 40
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[0, 2] = boxes[0, 0]  # zero width
    return InstanceData(bboxes=boxes.to(dtype))


COSTS = [(BBoxL1Cost(weight=5.0, box_format='xywh'),
          SyncFreeBBoxL1Cost(weight=5.0, box_format='xywh')),
         (BBoxL1Cost(weight=2.0), SyncFreeBBoxL1Cost(weight=2.0)),
         (IoUCost(iou_mode='giou', weight=2.0),
          SyncFreeIoUCost(iou_mode='giou', weight=2.0)),
         (IoUCost(iou_mode='iou'), SyncFreeIoUCost(iou_mode='iou'))]


@pytest.mark.parametrize('costs,dtype', list(itertools.product(
    range(len(COSTS)), [torch.float32, torch.float64, torch.float16])))
def test_mmdets_costs_bit_for_bit(costs, dtype):
    mmdets, ours = COSTS[costs]
    if dtype == torch.float16 and isinstance(ours, SyncFreeBBoxL1Cost):
        pytest.skip('no half-precision cdist on the CPU (mmdet\'s neither)')
    preds, gts = instances(30, 0, dtype), instances(7, 1, dtype)
    if dtype == torch.float16 and isinstance(ours, SyncFreeIoUCost):
        # mmdet's IoU cost takes fp16 predictions with fp32 ground truth
        gts = InstanceData(bboxes=gts.bboxes.float())
    ref = mmdets(preds, gts, META)
    mine = ours(preds, gts, META)
    assert mine.dtype == ref.dtype and mine.shape == (30, 7)
    assert torch.equal(mine, ref)


def test_no_tensor_from_pageable_host_data(monkeypatch):
    """On the CPU a pinned copy is a tensor from host data too: ours may
    make only those (one per L1 call, the factor), mmdet's make one
    pageable copy per call."""
    calls = []

    def counting_host_to_device(*args, **kwargs):
        calls.append(args)
        return device_copies.host_to_device(*args, **kwargs)

    monkeypatch.setattr(match_costs, 'host_to_device',
                        counting_host_to_device)
    preds = instances(30, 0, torch.float32)
    gts = instances(7, 1, torch.float32)
    for mmdets, ours in COSTS:
        counts = {}
        for name, cost in (('mmdet', mmdets), ('ours', ours)):
            calls.clear()
            with HostDataCounter() as counter:
                cost(preds, gts, META)
            counts[name] = counter.count - len(calls)
        assert counts == {'mmdet': 1, 'ours': 0}, type(mmdets).__name__


@pytest.mark.parametrize('config', ['co_deformable_detr_r50_1x_coco.py',
                                    'co_dino_5scale_r50_1x_coco.py'])
def test_configs_match_with_them(config):
    import os.path as osp

    from codetr_testing import REPO_ROOT
    cfg = load_config(osp.join(REPO_ROOT, 'configs', config))
    kinds = [c['type'] for c in
             cfg.model.query_head.train_cfg.assigner.match_costs]
    assert kinds == ['FocalLossCost', 'SyncFreeBBoxL1Cost',
                     'SyncFreeIoUCost']


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_no_synchronisation_on_the_gpu():
    """CUDA's sync debug mode raises on every synchronisation: mmdet's
    costs raise, ours do not and give mmdet's values."""
    preds = InstanceData(bboxes=instances(300, 0, torch.float32).bboxes.cuda())
    gts = InstanceData(bboxes=instances(7, 1, torch.float32).bboxes.cuda())
    refs = [mmdets(preds, gts, META) for mmdets, _ in COSTS]
    for _, ours in COSTS:  # the pinned buffers are allocated
        ours(preds, gts, META)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        mine = [ours(preds, gts, META) for _, ours in COSTS]
        for mmdets, _ in COSTS:
            with pytest.raises(RuntimeError, match='synchroniz'):
                mmdets(preds, gts, META)
    finally:
        torch.cuda.set_sync_debug_mode('default')
    for a, b in zip(mine, refs):
        assert torch.equal(a, b)
