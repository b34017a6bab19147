"""CoATSSHead's masked box and centerness losses (``masked_loss``, on by
default) against mmdet's ``ATSSHead.loss_by_feat_single`` on the same head
outputs and targets: the same values and gradients, also with an image
without boxes and a batch without positives, and no read of the device
(which mmdet's makes, so the counter can fail)."""
import math

import pytest
import torch
from codetr_testing import (HostDataCounter, WaitCounter, build_model,
                            make_batch, tiny_model_cfg)

from projects.codetr.models.aux_heads.co_atss_head import centerness_of
from projects.codetr.models.task_modules.level_batching import \
    levels_side_by_side

KEYS = ('loss_cls', 'loss_bbox', 'loss_centerness')


def atss_case(num_boxes, dtype, device='cpu'):
    """The tiny model's ATSS head in ``dtype``, pyramid features that
    require gradients, and a padded batch (the second image smaller than
    the padding, so some anchors are invalid and zeroed)."""
    model = build_model(tiny_model_cfg()).to(device=device, dtype=dtype)
    head = model.bbox_head[0].train()
    inputs, samples = make_batch(
        model, image_sizes=((128, 160), (96, 128)), num_boxes=num_boxes)
    for sample in samples:
        sample.gt_instances.bboxes = sample.gt_instances.bboxes.to(
            device=device, dtype=dtype)
        sample.gt_instances.labels = sample.gt_instances.labels.to(device)
    height, width = inputs.shape[-2:]
    gen = torch.Generator().manual_seed(1)
    feats = [  # mmdet's strides are (w, h)
        torch.randn(2, head.in_channels, math.ceil(height / stride[1]),
                    math.ceil(width / stride[0]), generator=gen,
                    dtype=dtype).to(device).requires_grad_()
        for stride in head.prior_generator.strides
    ]
    return head, feats, samples


def losses_and_grads(head, feats, samples, masked: bool):
    head.masked_loss = masked
    for feat in feats:
        feat.grad = None
    outs = head(feats)
    metas = [s.metainfo for s in samples]
    losses = head.loss_by_feat(*outs, [s.gt_instances for s in samples],
                               metas)
    head._targets = None
    sum(losses.values()).backward()
    return losses, [feat.grad.clone() for feat in feats]


@pytest.mark.parametrize('num_boxes', [(3, 2), (2, 0), (0, 0)])
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_masked_loss_is_mmdets(num_boxes, dtype):
    head, feats, samples = atss_case(num_boxes, dtype)
    assert head.masked_loss and head.batched_levels  # the defaults
    ours, our_grads = losses_and_grads(head, feats, samples, True)
    theirs, their_grads = losses_and_grads(head, feats, samples, False)
    assert list(ours) == list(theirs) == list(KEYS)
    # the same terms, summed with zeros in another order
    tol = dict(rtol=1e-12, atol=1e-15) if dtype == torch.float64 else \
        dict(rtol=1e-5, atol=1e-7)
    for key in KEYS:
        assert ours[key].dtype == theirs[key].dtype, key
        torch.testing.assert_close(ours[key], theirs[key], msg=key, **tol)
    for ours_grad, their_grad in zip(our_grads, their_grads):
        torch.testing.assert_close(ours_grad, their_grad, **tol)
    if sum(num_boxes):
        assert theirs['loss_bbox'] > 0 and theirs['loss_centerness'] > 0
    else:  # no positive: mmdet's zeros, with zero gradients
        assert ours['loss_bbox'] == 0 and ours['loss_centerness'] == 0


def test_masked_terms_stay_finite():
    """Invalid anchors are zeros, like the non-positives' targets: their
    centerness is 0 / 0, replaced before it reaches a loss; the losses and
    gradients stay finite."""
    zeros = torch.zeros(1, 4)
    assert torch.isnan(centerness_of(zeros, zeros)).all()
    head, feats, samples = atss_case((3, 2), torch.float64)
    flags = head.get_anchors([f.shape[-2:] for f in feats],
                             [s.metainfo for s in samples],
                             device='cpu')[1]
    assert not torch.cat(flags[1]).all()  # the smaller image has some
    losses, grads = losses_and_grads(head, feats, samples, True)
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(torch.isfinite(g).all() for g in grads)


def test_non_positive_outputs_do_not_reach_the_losses():
    """An overflow (inf, NaN) in the box or centerness outputs at a
    non-positive anchor, which mmdet never looks at, changes nothing."""
    head, feats, samples = atss_case((3, 2), torch.float64)
    metas = [s.metainfo for s in samples]
    gts = [s.gt_instances for s in samples]
    cls_scores, bbox_preds, centernesses = head(feats)
    clean = head.loss_by_feat(cls_scores, bbox_preds, centernesses, gts,
                              metas)
    positive = head._targets[1][0] < head.num_classes  # level 0
    head._targets = None
    assert not positive.all()
    bbox_preds = list(bbox_preds)
    centernesses = list(centernesses)
    width = bbox_preds[0].size(-1)
    b, a = (~positive).nonzero()[0].tolist()
    bbox_preds[0] = bbox_preds[0].clone()
    centernesses[0] = centernesses[0].clone()
    bbox_preds[0][b, :, a // width, a % width] = float('inf')
    centernesses[0][b, :, a // width, a % width] = float('nan')
    losses = head.loss_by_feat(cls_scores, bbox_preds, centernesses, gts,
                               metas)
    head._targets = None
    for key in ('loss_bbox', 'loss_centerness'):
        assert torch.equal(losses[key], clean[key]), key


def test_centerness_is_mmdets():
    head = build_model(tiny_model_cfg()).bbox_head[0]
    gen = torch.Generator().manual_seed(0)
    gts = torch.rand(50, 2, generator=gen, dtype=torch.float64) * 100
    gts = torch.cat([gts, gts + 5 + torch.rand(50, 2, generator=gen,
                                               dtype=torch.float64) * 50], 1)
    # anchors centred strictly inside their boxes
    frac = torch.rand(50, 2, generator=gen, dtype=torch.float64) * 0.8 + 0.1
    centre = gts[:, :2] + frac * (gts[:, 2:] - gts[:, :2])
    anchors = torch.cat([centre - 4, centre + 4], 1)
    assert torch.equal(
        centerness_of(anchors, gts), head.centerness_target(anchors, gts))


class NoClassificationLoss(torch.nn.Module):
    """Stands in for the focal loss, which on the CPU reads the device
    (``one_hot``) and on a GPU does not (mmcv's kernel)."""

    def forward(self, cls_score, *args, **kwargs):
        return cls_score.sum() * 0


def test_no_reads_from_the_device():
    head, feats, samples = atss_case((3, 2), torch.float32)
    outs = head(feats)
    metas = [s.metainfo for s in samples]
    anchors, valid = head.get_anchors([f.shape[-2:] for f in feats], metas,
                                      device=feats[0].device)
    targets = head.get_targets(anchors, valid,
                               [s.gt_instances for s in samples], metas)
    args = (torch.cat(targets[0], 1), *(levels_side_by_side(o)
                                        for o in outs),
            torch.cat(targets[1], 1), torch.cat(targets[2], 1),
            torch.cat(targets[3], 1))
    head.loss_cls = NoClassificationLoss()
    head.masked_loss_single(*args, avg_factor=targets[-1])  # the coder's
    counts, host_data = {}, {}  # constants reach the device once
    for name, fn in (('mmdet', head.loss_by_feat_single),
                     ('ours', head.masked_loss_single)):
        with WaitCounter() as counter, HostDataCounter() as copies:
            fn(*args, avg_factor=targets[-1])
        counts[name], host_data[name] = counter.waits, copies.count
    # mmdet's: the positives' nonzero and the centerness NaN check
    assert len(counts['mmdet']) >= 2, counts
    assert counts['ours'] == []
    # no copy from the host either (test_sync_free_coder.py shows the
    # counter failing on mmdet's coder)
    assert host_data['ours'] == 0, host_data


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_no_synchronisation_on_the_gpu():
    """The whole training computation of the head (forward, anchors,
    targets, the three losses, with mmcv's focal-loss kernel) under CUDA's
    sync debug mode, which raises on every synchronisation; mmdet's single
    loss raises there."""
    head, feats, samples = atss_case((3, 2), torch.float32, 'cuda')
    metas = [s.metainfo for s in samples]
    gts = [s.gt_instances for s in samples]
    head.masked_loss = False
    expected = head.loss_by_feat(*head(feats), gts, metas)
    head.masked_loss = True
    head.loss_by_feat(*head(feats), gts, metas)  # anchors cached
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        losses = head.loss_by_feat(*head(feats), gts, metas)
        head.masked_loss = False
        with pytest.raises(RuntimeError, match='synchroniz'):
            head.loss_by_feat(*head(feats), gts, metas)
    finally:
        torch.cuda.set_sync_debug_mode('default')
    for key in KEYS:
        torch.testing.assert_close(losses[key], expected[key], msg=key)
