"""Box overlaps without a host copy against mmdet's ``bbox_overlaps`` (the
reference): the same values bit for bit in every mode, dtype and shape,
degenerate and NaN boxes included, and no tensor made from host data
(mmdet's makes one per call, so the counter can fail)."""
import itertools

import pytest
import torch
from codetr_testing import HostDataCounter
from mmdet.models.task_modules import ATSSAssigner, BboxOverlaps2D
from mmdet.structures.bbox import bbox_overlaps

from projects.codetr.models.task_modules import (BatchedATSSAssigner,
                                                 SyncFreeBboxOverlaps2D,
                                                 box_overlaps)
from projects.codetr.models.task_modules.sync_free_overlaps import \
    sync_free_calculator


def boxes(shape, seed, dtype=torch.float32):
    """Random boxes, with degenerate ones: zero width, inverted, a point,
    and a NaN coordinate."""
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(*shape, 2, generator=gen, dtype=torch.float64) * 50
    wh = torch.rand(*shape, 2, generator=gen, dtype=torch.float64) * 30
    out = torch.cat([xy, xy + wh], -1)
    flat = out.view(-1, 4)
    if flat.size(0) >= 4:
        flat[0, 2] = flat[0, 0]  # zero width
        flat[1, 2:] = flat[1, :2] - 3  # inverted
        flat[2, 2:] = flat[2, :2]  # a point
        flat[3, 1] = float('nan')
    return out.to(dtype)


@pytest.mark.parametrize(
    'mode,aligned,dtype',
    list(itertools.product(['iou', 'iof', 'giou'], [False, True],
                           [torch.float32, torch.float64, torch.float16])))
@pytest.mark.parametrize('batch', [(), (3, )])
def test_bit_for_bit_mmdets(mode, aligned, dtype, batch):
    b1 = boxes(batch + (7, ), 0, dtype)
    b2 = boxes(batch + ((7, ) if aligned else (11, )), 1, dtype)
    ours = box_overlaps(b1, b2, mode, aligned)
    ref = bbox_overlaps(b1, b2, mode, aligned)
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    assert torch.equal(ours.isnan(), ref.isnan()) and ref.isnan().any()
    assert torch.equal(ours.nan_to_num(), ref.nan_to_num())
    if mode != 'giou':  # degenerate pairs: 0 / eps
        assert (ref == 0).any()


@pytest.mark.parametrize('rows,cols,aligned', [(0, 5, False), (4, 0, False),
                                               (0, 0, True)])
def test_empty_inputs(rows, cols, aligned):
    b1, b2 = boxes((2, rows), 0), boxes((2, cols), 1)
    ours = box_overlaps(b1, b2, 'iou', aligned)
    assert ours.shape == bbox_overlaps(b1, b2, 'iou', aligned).shape


def test_bad_input_is_named():
    with pytest.raises(ValueError, match='mode'):
        box_overlaps(boxes((3, ), 0), boxes((3, ), 1), 'dice')
    with pytest.raises(ValueError, match='aligned'):
        box_overlaps(boxes((3, ), 0), boxes((4, ), 1), is_aligned=True)


def test_no_tensor_from_host_data():
    b1, b2 = boxes((7, ), 0), boxes((11, ), 1)
    counts = {}
    for name, fn in (('mmdet', bbox_overlaps), ('ours', box_overlaps)):
        with HostDataCounter() as counter:
            fn(b1, b2, 'giou')
        counts[name] = counter.count
    assert counts == {'mmdet': 1, 'ours': 0}


def test_calculator_is_mmdets():
    b1 = torch.cat([boxes((6, ), 0), torch.rand(6, 1)], 1)  # with scores
    b2 = torch.cat([boxes((9, ), 1), torch.rand(9, 1)], 1)
    for mode in ('iou', 'iof'):
        ours = SyncFreeBboxOverlaps2D()(b1, b2, mode)
        ref = BboxOverlaps2D()(b1, b2, mode)
        assert torch.equal(ours.nan_to_num(), ref.nan_to_num())
    # mmdet's fp16 mode (scaled, cast) is mmdet's code
    ours = SyncFreeBboxOverlaps2D(scale=8., dtype='fp16')(b1, b2)
    ref = BboxOverlaps2D(scale=8., dtype='fp16')(b1, b2)
    assert torch.equal(ours.nan_to_num(), ref.nan_to_num())


def test_plain_calculators_are_swapped():
    swapped = sync_free_calculator(BboxOverlaps2D(scale=2., dtype='fp16'))
    assert type(swapped) is SyncFreeBboxOverlaps2D
    assert (swapped.scale, swapped.dtype) == (2., 'fp16')
    other = SyncFreeBboxOverlaps2D()
    assert sync_free_calculator(other) is other
    assigner = BatchedATSSAssigner.from_assigner(ATSSAssigner(topk=9))
    assert type(assigner.iou_calculator) is SyncFreeBboxOverlaps2D


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_no_synchronisation_on_the_gpu():
    """CUDA's sync debug mode raises on every synchronisation: mmdet's
    call raises, ours does not and gives mmdet's values."""
    b1, b2 = boxes((2, 50), 0).cuda(), boxes((2, 80), 1).cuda()
    ref = bbox_overlaps(b1, b2, 'giou')
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        ours = box_overlaps(b1, b2, 'giou')
        with pytest.raises(RuntimeError, match='synchroniz'):
            bbox_overlaps(b1, b2, 'giou')
    finally:
        torch.cuda.set_sync_debug_mode('default')
    assert torch.equal(ours.nan_to_num(), ref.nan_to_num())


def test_batch_dimensions_must_agree():
    with pytest.raises(ValueError, match='batch dimensions'):
        box_overlaps(boxes((1, 3), 0), boxes((2, 5), 1))


def test_named_in_a_config_it_keeps_the_batched_paths():
    """The batched RoI targets accept it like mmdet's own calculator (the
    RPN's check is the same membership), and still refuse others."""
    from mmdet.models.task_modules import MaxIoUAssigner, RandomSampler

    from projects.codetr.models.task_modules.batched_roi_targets import \
        check_batched_roi_config

    class OtherOverlaps(BboxOverlaps2D):
        pass

    assigner = MaxIoUAssigner(
        pos_iou_thr=0.5,
        neg_iou_thr=0.5,
        iou_calculator=dict(type='SyncFreeBboxOverlaps2D'))
    assert type(assigner.iou_calculator) is SyncFreeBboxOverlaps2D
    sampler = RandomSampler(num=512, pos_fraction=0.25)
    check_batched_roi_config(assigner, sampler)
    assigner.iou_calculator = OtherOverlaps()
    with pytest.raises(ValueError, match='iou_calculator'):
        check_batched_roi_config(assigner, sampler)
