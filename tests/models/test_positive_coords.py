"""Positive coordinates and auxiliary targets (docs/design.md, positive
queries)."""
import torch
from codetr_testing import build_model, make_batch, tiny_model_cfg
from mmdet.structures.bbox import bbox_xyxy_to_cxcywh

from projects.codetr.models import PositiveCoords, build_aux_targets

K = 3  # classes; label K is background


def _hand_made(num_pos=(3, 12), num_cands=20, dims=8):
    """Two images; positives at known indices, features = index."""
    labels = torch.full((2, num_cands), K, dtype=torch.long)
    for i, n in enumerate(num_pos):
        labels[i, torch.arange(n) * 1 + i] = torch.arange(n) % K
    x1y1 = torch.arange(num_cands, dtype=torch.float32)[None, :, None].expand(
        2, -1, 2) + 1
    coords = torch.cat([x1y1, x1y1 + 10], dim=-1)
    targets = torch.where((labels < K)[..., None], coords + 2,
                          torch.zeros_like(coords))
    feats = torch.arange(num_cands, dtype=torch.float32)[None, :, None].expand(
        2, -1, dims).clone()
    return PositiveCoords(coords, labels, targets, feats, 'test')


METAS = [dict(img_shape=(40, 50)), dict(img_shape=(64, 32))]


def test_targets_select_positives_first_and_pad_with_negatives():
    torch.manual_seed(0)
    pos = _hand_made(num_pos=(3, 12))
    out = build_aux_targets(pos, METAS, num_classes=K, max_pos_coords=10)
    # N = max(9, min(10, max(3, 12))) = 10
    assert out.coords.shape == (2, 10, 4)
    assert out.feats.shape == (2, 10, 8)
    assert out.labels.shape == out.label_weights.shape == (2, 10)
    assert (out.label_weights == 1).all()
    # image 0: its 3 positives, then 7 negatives
    idx0 = out.feats[0, :, 0].long()
    assert set(idx0[:3].tolist()) == {0, 1, 2}
    assert (out.labels[0, :3] < K).all() and (out.labels[0, 3:] == K).all()
    assert (out.bbox_weights[0, :3] == 1).all()
    assert (out.bbox_weights[0, 3:] == 0).all()
    assert len(set(idx0.tolist())) == 10  # no candidate twice
    # image 1: 12 positives > N: a subset of 10 positives, no padding
    idx1 = out.feats[1, :, 0].long()
    assert (pos.labels[1, idx1] < K).all()
    assert (out.bbox_weights[1] == 1).all()
    assert len(set(idx1.tolist())) == 10


def test_targets_are_normalised_by_the_image_not_the_canvas():
    pos = _hand_made()
    out = build_aux_targets(pos, METAS, num_classes=K, max_pos_coords=10)
    for i, meta in enumerate(METAS):
        h, w = meta['img_shape']
        factor = torch.tensor([w, h, w, h], dtype=torch.float32)
        idx = out.feats[i, :, 0].long()
        expected = bbox_xyxy_to_cxcywh(pos.coords[i, idx] / factor)
        torch.testing.assert_close(out.coords[i], expected)
        expected_t = bbox_xyxy_to_cxcywh(pos.targets[i, idx] / factor)
        torch.testing.assert_close(out.bbox_targets[i], expected_t)
        torch.testing.assert_close(out.labels[i], pos.labels[i, idx])


def test_at_least_nine_slots_and_at_most_max():
    none = _hand_made(num_pos=(0, 0))
    out = build_aux_targets(none, METAS, num_classes=K)
    assert out.coords.shape[1] == 9
    assert (out.bbox_weights == 0).all() and (out.labels == K).all()
    many = _hand_made(num_pos=(15, 18), num_cands=40)
    out = build_aux_targets(many, METAS, num_classes=K, max_pos_coords=12)
    assert out.coords.shape[1] == 12


def test_random_subset_is_uniform_over_positives():
    torch.manual_seed(0)
    pos = _hand_made(num_pos=(3, 12))
    seen = set()
    for _ in range(30):
        out = build_aux_targets(pos, METAS, num_classes=K, max_pos_coords=10)
        seen.update(out.feats[1, :, 0].long().tolist())
    assert seen == set(range(1, 13))  # every positive of image 1 drawn


def _pyramid_and_samples(model):
    inputs, samples = make_batch(model)
    x = model.extract_feat(inputs)
    enc = model.query_head.encode(x, samples)
    return model.query_head.memory_to_pyramid(enc['memory'], x), samples


def _gt_set(samples, i):
    return {tuple(b) for b in samples[i].gt_instances.bboxes.tolist()}


def test_atss_positive_coords_cover_all_anchors():
    model = build_model(tiny_model_cfg()).train()
    pyramid, samples = _pyramid_and_samples(model)
    assert len(pyramid) == 5
    num_anchors = sum(p.shape[2] * p.shape[3] for p in pyramid)
    _, pos = model.bbox_head[0].loss_and_pos_coords(pyramid, samples)
    assert pos.coords.shape == (2, num_anchors, 4)
    assert pos.feats.shape == (2, num_anchors, 256)
    assert not pos.coords.requires_grad and pos.feats.requires_grad
    # level-major, row-major (x fastest), mmdet's centre offset 0
    centres = (pos.coords[0, :2, :2] + pos.coords[0, :2, 2:]) / 2
    torch.testing.assert_close(centres, torch.tensor([[0., 0.], [8., 0.]]))
    last_level = pyramid[-1].shape[2] * pyramid[-1].shape[3]
    sizes = pos.coords[0, -last_level:, 2:] - pos.coords[0, -last_level:, :2]
    assert (sizes == 8 * 128).all()  # octave_base_scale 8 x stride 128
    for i in range(2):
        positive = pos.labels[i] < K
        assert positive.any()
        gts = _gt_set(samples, i)
        assert {tuple(t) for t in pos.targets[i, positive].tolist()} <= gts


def test_rcnn_positive_coords_are_sampled_rois():
    model = build_model(tiny_model_cfg()).train()
    pyramid, samples = _pyramid_and_samples(model)
    proposals = model.rpn_head.predict(pyramid, samples, rescale=False)
    _, pos = model.roi_head[0].loss_and_pos_coords(pyramid, proposals,
                                                   samples)
    assert pos.coords.shape[0] == 2 and pos.coords.shape[1] <= 64
    assert pos.feats.shape == (*pos.coords.shape[:2], 256)
    assert pos.feats.requires_grad and not pos.coords.requires_grad
    for i in range(2):
        positive = pos.labels[i] < K
        # ground-truth boxes are added as proposals: positives exist
        assert positive.any()
        first_negative = int(positive.sum())
        assert positive[:first_negative].all()  # positives come first
        gts = _gt_set(samples, i)
        assert {tuple(t) for t in pos.targets[i, positive].tolist()} <= gts
        assert (pos.targets[i, ~positive] == 0).all()
