"""The box coders without host copies against mmdet's
``DeltaXYWHBBoxCoder`` (the reference): the same boxes (decode) and deltas
(encode, float32 and float16; float64 kept in float64) bit for bit for
every option and dtype, and no tensor made from host data after the first
call (mmdet's makes two per call, so the counter can fail)."""
import itertools

import pytest
import torch
from codetr_testing import HostDataCounter
from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder

from projects.codetr.models.precision.any_dtype_heads import \
    AnyDtypeDeltaXYWHBBoxCoder
from projects.codetr.models.task_modules import SyncFreeDeltaXYWHBBoxCoder

OPTIONS = [
    dict(),
    dict(target_means=(0.1, -0.2, 0.0, 0.05),
         target_stds=(0.1, 0.1, 0.2, 0.2)),  # the RoI head's stds
    dict(clip_border=False),
    dict(add_ctr_clamp=True, ctr_clamp=16),
]


def anchors_and_deltas(n, num_classes, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 100
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 60 + 1
    anchors = torch.cat([xy, xy + wh], 1).to(dtype)
    # large deltas too, so that the ratio clamp and the border clip act
    deltas = (torch.randn(n, 4 * num_classes, generator=gen,
                          dtype=torch.float64) * 3).to(dtype)
    return anchors, deltas


@pytest.mark.parametrize(
    'options,num_classes,dtype,max_shape',
    list(
        itertools.product(range(len(OPTIONS)), [1, 3],
                          [torch.float32, torch.float64, torch.float16],
                          [None, (90, 120)])))
def test_bit_for_bit_mmdets(options, num_classes, dtype, max_shape):
    anchors, deltas = anchors_and_deltas(40, num_classes, dtype)
    cfg = OPTIONS[options]
    ref = DeltaXYWHBBoxCoder(**cfg).decode(anchors, deltas, max_shape)
    for coder in (SyncFreeDeltaXYWHBBoxCoder(**cfg),
                  AnyDtypeDeltaXYWHBBoxCoder(**cfg)):
        for _ in range(2):  # with the constants made, then cached
            ours = coder.decode(anchors, deltas, max_shape)
            assert ours.dtype == ref.dtype and torch.equal(ours, ref)


def test_cached_constants_follow_the_dtype():
    coder = SyncFreeDeltaXYWHBBoxCoder(target_stds=(0.1, 0.1, 0.2, 0.2))
    for dtype in (torch.float32, torch.float64):
        anchors, deltas = anchors_and_deltas(5, 1, dtype)
        assert torch.equal(
            coder.decode(anchors, deltas),
            DeltaXYWHBBoxCoder(target_stds=(0.1, 0.1, 0.2, 0.2)).decode(
                anchors, deltas))
    assert sorted(str(d) for _, d in coder._constants) == [
        'torch.float32', 'torch.float64'
    ]


def test_other_inputs_take_mmdets_decode():
    anchors, deltas = anchors_and_deltas(6, 1, torch.float32)
    coder = SyncFreeDeltaXYWHBBoxCoder()
    assert coder.decode(anchors[:0], deltas[:0]).shape == (0, 4)
    # batched (3-D) deltas: mmdet's onnx_delta2bbox path
    with pytest.warns(UserWarning, match='onnx_delta2bbox'):
        ours = coder.decode(anchors[None], deltas[None])
    assert torch.equal(ours[0], DeltaXYWHBBoxCoder().decode(anchors, deltas))
    with pytest.raises(ValueError, match='5 deltas for 6 boxes'):
        coder.decode(anchors, deltas[:5])


def host_data_counts(method, ours, args):
    """Tensors made from host data by mmdet's coder's ``method`` and by
    ``ours`` (after a first call, which makes its constants)."""
    getattr(ours, method)(*args)
    counts = {}
    for name, coder in (('mmdet', DeltaXYWHBBoxCoder()), ('ours', ours)):
        with HostDataCounter() as counter:
            getattr(coder, method)(*args)
        counts[name] = counter.count
    return counts


def test_no_tensor_from_host_data():
    args = anchors_and_deltas(40, 1, torch.float32)
    counts = host_data_counts('decode', SyncFreeDeltaXYWHBBoxCoder(), args)
    assert counts == {'mmdet': 2, 'ours': 0}


def boxes_and_targets(n, dtype, seed=1):
    anchors, _ = anchors_and_deltas(n, 1, torch.float64, seed)
    gen = torch.Generator().manual_seed(seed)
    shift = torch.rand(n, 4, generator=gen, dtype=torch.float64) * 20 - 10
    targets = anchors + shift
    targets[:, 2:] = torch.maximum(targets[:, 2:], targets[:, :2] + 1)
    return anchors.to(dtype), targets.to(dtype)


@pytest.mark.parametrize('options,dtype', list(
    itertools.product(range(2), [torch.float32, torch.float16])))
def test_encode_bit_for_bit_mmdets(options, dtype):
    """mmdet's ``bbox2delta`` computes in float32 for these dtypes."""
    boxes, targets = boxes_and_targets(40, dtype)
    cfg = OPTIONS[options]
    ref = DeltaXYWHBBoxCoder(**cfg).encode(boxes, targets)
    coder = AnyDtypeDeltaXYWHBBoxCoder(**cfg)
    for _ in range(2):  # with the constants made, then cached
        ours = coder.encode(boxes, targets)
        assert ours.dtype == ref.dtype == torch.float32
        assert torch.equal(ours, ref)


def test_encode_keeps_float64():
    boxes, targets = boxes_and_targets(40, torch.float64)
    cfg = OPTIONS[1]
    ours = AnyDtypeDeltaXYWHBBoxCoder(**cfg).encode(boxes, targets)
    assert ours.dtype == torch.float64
    # mmdet's, which rounds to float32, to float32's precision
    ref = DeltaXYWHBBoxCoder(**cfg).encode(boxes, targets)
    torch.testing.assert_close(ours.float(), ref, rtol=1e-5, atol=1e-5)
    assert not torch.equal(ours, ref.double())


def test_encode_makes_no_tensor_from_host_data():
    args = boxes_and_targets(40, torch.float32)
    counts = host_data_counts('encode', AnyDtypeDeltaXYWHBBoxCoder(), args)
    assert counts == {'mmdet': 2, 'ours': 0}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_no_synchronisation_on_the_gpu():
    anchors, deltas = (t.cuda() for t in anchors_and_deltas(
        40, 1, torch.float32))
    coder = SyncFreeDeltaXYWHBBoxCoder()
    coder.decode(anchors, deltas)  # the constants reach the device
    ref = DeltaXYWHBBoxCoder().decode(anchors, deltas)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        ours = coder.decode(anchors, deltas)
        with pytest.raises(RuntimeError, match='synchroniz'):
            DeltaXYWHBBoxCoder().decode(anchors, deltas)
    finally:
        torch.cuda.set_sync_debug_mode('default')
    assert torch.equal(ours, ref)
