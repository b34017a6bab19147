"""The RPN's batched targets and proposals against mmdet's per-image code.

``CoRPNHead(batched_images=True)`` against the same head with
``batched_images=False`` (mmdet's ``AnchorHead.get_targets`` and
``RPNHead.predict_by_feat``), on batches of images of different sizes in
one padded shape, with 0, 1 and many ground truths, tiny, duplicated and
border-touching boxes: the assignment tensor for tensor, the sampled sets
by mmdet's rules (the random stream differs), the sampling distribution,
and the proposals tensor for tensor in float32 and float64.
"""
import copy

import pytest
import torch
from codetr_testing import WaitCounter
from mmdet.models.task_modules.prior_generators import anchor_inside_flags
from mmdet.registry import MODELS
from mmengine.config import Config, ConfigDict
from mmengine.structures import InstanceData
from scipy.stats import chi2

import projects.codetr  # noqa: F401  (registers the head)
from projects.codetr.models.precision import nms
from projects.codetr.models.task_modules.batched_anchor_targets import (
    batched_max_iou_assign, batched_random_sample, pad_gt_instances)

BATCH_SHAPE = (96, 128)
IMG_SHAPES = [(96, 128), (70, 100), (52, 128)]
STRIDES = (8, 16, 32, 64, 128)
FEATMAP_SIZES = [(-(-BATCH_SHAPE[0] // s), -(-BATCH_SHAPE[1] // s))
                 for s in STRIDES]


def rpn_cfg() -> tuple:
    """The experiment config's RPN and its training proposal config."""
    cfg = Config.fromfile('configs/co_deformable_detr_r50_1x_coco.py')
    head = copy.deepcopy(cfg.model.rpn_head.to_dict())
    return head, ConfigDict(head.pop('proposal_cfg'))


# the config's assigner, then other MaxIoU settings the batched one reads
ASSIGNERS = [
    dict(),
    dict(neg_iou_thr=(0.1, 0.3), gt_max_assign_all=False),
    dict(pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5,
         match_low_quality=False),
    dict(pos_iou_thr=0.6, neg_iou_thr=0.6, min_pos_iou=0.0),
]


def build_head(batched: bool, dtype=torch.float32, assigner=None,
               **train_cfg):
    cfg, _ = rpn_cfg()
    cfg['train_cfg'].update(train_cfg)
    cfg['train_cfg']['assigner'].update(assigner or {})
    head = MODELS.build(dict(cfg, batched_images=batched))
    return head.to(dtype)


def random_gts(num: int, img_shape: tuple, g: torch.Generator) -> InstanceData:
    """``num`` boxes inside ``img_shape``: random ones, a tiny one, one
    touching the bottom-right border, and a duplicate of the first."""
    h, w = img_shape
    xy = torch.rand(num, 2, generator=g) * torch.tensor([w - 4., h - 4.])
    wh = 2 + torch.rand(num, 2, generator=g) * torch.tensor([w / 2, h / 2])
    boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([w, h]))], 1)
    if num >= 2:
        boxes[1] = torch.tensor([w - 30., h - 20., w, h])  # on the border
    if num >= 3:
        boxes[2, 2:] = boxes[2, :2] + 1.5  # tiny
    if num >= 4:
        boxes[3] = boxes[0]  # duplicate
    return InstanceData(bboxes=boxes, labels=torch.zeros(num,
                                                         dtype=torch.long))


def random_batch(counts: list, seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    metas = [
        dict(img_shape=shape, pad_shape=(-(-shape[0] // 32) * 32,
                                         -(-shape[1] // 32) * 32),
             batch_input_shape=BATCH_SHAPE) for shape in IMG_SHAPES
    ][:len(counts)]
    gts = [random_gts(n, m['img_shape'], g) for n, m in zip(counts, metas)]
    return gts, metas


COUNTS = [[0, 1, 5], [3, 0], [1, 12, 40], [0, 0], [60, 2, 7], [200, 0, 1]]


def anchors_and_flags(head, metas, dtype=torch.float32):
    anchors, flags = head.get_anchors(FEATMAP_SIZES, metas, device='cpu')
    return [[a.to(dtype) for a in anchors[0]]] * len(metas), flags


def inside_flags(anchor_list, flag_list, metas, allowed_border):
    """The anchors (A, 4) and mmdet's inside ones per image, (B, A)."""
    anchors = torch.cat(anchor_list[0])
    flags = torch.stack([torch.cat(f) for f in flag_list])
    inside = torch.stack([
        anchor_inside_flags(anchors, f, m['img_shape'], allowed_border)
        for f, m in zip(flags, metas)
    ])
    assert allowed_border < 0 or not torch.equal(inside, flags)
    return anchors, inside


@pytest.mark.parametrize('assigner', range(len(ASSIGNERS)))
@pytest.mark.parametrize('allowed_border', [-1, 0])
@pytest.mark.parametrize('case', range(len(COUNTS)))
def test_assignment_is_mmdets(case, allowed_border, assigner):
    head = build_head(False, assigner=ASSIGNERS[assigner])
    gts, metas = random_batch(COUNTS[case], case)
    anchors, inside = inside_flags(*anchors_and_flags(head, metas), metas,
                                   allowed_border)
    gt_inds, labels = batched_max_iou_assign(head.assigner, anchors, inside,
                                             *pad_gt_instances(gts))
    for b, gt in enumerate(gts):
        ref = head.assigner.assign(InstanceData(priors=anchors[inside[b]]),
                                   gt)
        assert torch.equal(gt_inds[b][inside[b]], ref.gt_inds)
        assert torch.equal(labels[b][inside[b]], ref.labels)
        assert (gt_inds[b][~inside[b]] == -1).all()


def mmdet_sets(head, anchors, flags, gts, metas):
    """Per image mmdet's positive and negative anchors among the inside
    ones ``flags`` (full-size masks) and each anchor's assigned truth
    index."""
    out = []
    for f, gt, meta in zip(flags, gts, metas):
        ref = head.assigner.assign(InstanceData(priors=anchors[f]), gt)
        inds = torch.full((len(anchors), ), -1, dtype=torch.long)
        inds[f] = ref.gt_inds
        out.append((inds > 0, inds == 0, inds))
    return out


@pytest.mark.parametrize('allowed_border', [-1, 0])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('case', range(len(COUNTS)))
def test_targets_follow_mmdets_rules(case, dtype, allowed_border):
    torch.manual_seed(case)
    ours = build_head(True, dtype, allowed_border=allowed_border)
    ref = build_head(False, dtype, allowed_border=allowed_border)
    gts, metas = random_batch(COUNTS[case], case)
    gts = [InstanceData(bboxes=g.bboxes.to(dtype), labels=g.labels)
           for g in gts]
    anchor_list, flag_list = anchors_and_flags(ours, metas, dtype)
    with WaitCounter() as counter:
        labels, label_w, targets, target_w, avg = ours.get_targets(
            anchor_list, flag_list, gts, metas)
    assert counter.waits == []  # nothing read back from the device
    r_labels, r_label_w, r_targets, r_target_w, r_avg = ref.get_targets(
        anchor_list, flag_list, gts, metas)
    for a, b in zip((labels, label_w, targets, target_w),
                    (r_labels, r_label_w, r_targets, r_target_w)):
        assert [t.shape for t in a] == [t.shape for t in b]
        assert [t.dtype for t in a] == [t.dtype for t in b]
    labels, label_w = torch.cat(labels, 1), torch.cat(label_w, 1)
    targets, target_w = torch.cat(targets, 1), torch.cat(target_w, 1)
    r_label_w = torch.cat(r_label_w, 1)
    assert avg.item() == r_avg

    anchors, flags = inside_flags(anchor_list, flag_list, metas,
                                  allowed_border)
    sets = mmdet_sets(ref, anchors, flags, gts, metas)
    for b, (pos, neg, inds) in enumerate(sets):
        sampled_pos = (label_w[b] > 0) & (labels[b] == 0)
        sampled_neg = (label_w[b] > 0) & (labels[b] == 1)
        num_pos = min(int(pos.sum()), 128)
        num_neg = min(int(neg.sum()), 256 - num_pos)
        assert int(sampled_pos.sum()) == num_pos
        assert int(sampled_neg.sum()) == num_neg
        assert not (sampled_pos & ~pos).any()
        assert not (sampled_neg & ~neg).any()
        assert label_w[b].sum() == r_label_w[b].sum()
        assert (labels[b][~sampled_pos] == 1).all()
        assert (label_w[b][~flags[b]] == 0).all()
        expected = ref.bbox_coder.encode(
            anchors[sampled_pos], gts[b].bboxes[inds[sampled_pos] - 1])
        assert torch.equal(targets[b][sampled_pos], expected)
        assert (targets[b][~sampled_pos] == 0).all()
        assert torch.equal(target_w[b], sampled_pos[:, None].expand(
            -1, 4).to(dtype))


def test_sample_counts():
    """The count rule, where positives or negatives run short."""
    head = build_head(True)
    pos_counts, neg_counts = [0, 5, 128, 300, 300, 7], [0, 10, 200, 5000, 0,
                                                        250]
    gt_inds = torch.full((6, 6000), -1)
    for b, (p, n) in enumerate(zip(pos_counts, neg_counts)):
        slots = torch.randperm(6000)
        gt_inds[b, slots[:p]] = 1 + b
        gt_inds[b, slots[p:p + n]] = 0
    pos, neg = batched_random_sample(head.sampler, gt_inds)
    for b, (p, n) in enumerate(zip(pos_counts, neg_counts)):
        assert int(pos[b].sum()) == min(p, 128)
        assert int(neg[b].sum()) == min(n, 256 - min(p, 128))
        assert (gt_inds[b][pos[b]] > 0).all()
        assert (gt_inds[b][neg[b]] == 0).all()


def test_sample_distribution_is_uniform():
    """Over many draws (one image per draw, all in one batch) every
    eligible anchor is drawn about equally often: chi-square at 1e-3."""
    head = build_head(True)
    draws, num_anchors = 3000, 1200
    g = torch.Generator().manual_seed(0)
    slots = torch.randperm(num_anchors, generator=g)
    row = torch.full((num_anchors, ), -1)
    row[slots[:200]] = 1  # 200 positives, 128 drawn
    row[slots[200:600]] = 0  # 400 negatives, 128 drawn
    torch.manual_seed(0)
    pos, neg = batched_random_sample(head.sampler,
                                     row.expand(draws, -1).clone())
    for taken, members, each in ((pos, slots[:200], 128),
                                 (neg, slots[200:600], 128)):
        freq = taken.sum(0)[members].double()
        expected = draws * each / len(members)
        stat = ((freq - expected)**2 / expected).sum().item()
        assert stat < chi2.ppf(0.999, len(members) - 1), stat


def random_outputs(dtype, seed):
    """RPN outputs with many equal scores (coarse logits, saturated
    sigmoids) and boxes some of which collapse below the minimum size."""
    g = torch.Generator().manual_seed(seed)
    num_imgs = 3
    cls_scores = [(torch.randint(-8, 8, (num_imgs, 9, h, w), generator=g) /
                   2).to(dtype) for h, w in FEATMAP_SIZES]
    cls_scores[0][0, :2] = 40.  # sigmoid 1.0 exactly: ties at the top
    bbox_preds = [torch.randn(num_imgs, 36, h, w, generator=g).to(dtype) * 2
                  for h, w in FEATMAP_SIZES]
    bbox_preds[1][2, 2::4] = -9.  # widths below the minimum size
    return cls_scores, bbox_preds


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('nms_pre,min_bbox_size,max_per_img',
                         [(4000, 0, 1000), (60, 4, 40), (-1, -1, 25),
                          (100, 30, 1000)])
def test_proposals_are_mmdets(dtype, nms_pre, min_bbox_size, max_per_img):
    _, cfg = rpn_cfg()
    cfg.update(nms_pre=nms_pre, min_bbox_size=min_bbox_size,
               max_per_img=max_per_img)
    _, metas = random_batch([0, 0, 0], 0)
    ours, ref = build_head(True, dtype), build_head(False, dtype)
    for seed in range(3):
        cls_scores, bbox_preds = random_outputs(dtype, seed)
        a = ours.predict_by_feat(cls_scores, bbox_preds,
                                 batch_img_metas=metas, cfg=cfg)
        b = ref.predict_by_feat(cls_scores, bbox_preds,
                                batch_img_metas=metas, cfg=cfg)
        for x, y in zip(a, b):
            assert set(x.keys()) == set(y.keys())
            for key in y.keys():
                assert x[key].dtype == y[key].dtype, key
                assert torch.equal(x[key], y[key]), key


def test_ignored_boxes_take_mmdets_path_only_where_the_assigner_uses_them():
    """COCO's crowd boxes reach the RPN as ignored instances; its assigner
    leaves them out (``ignore_iof_thr=-1``), so the batched path applies
    and a crowd box changes no target; with ``ignore_iof_thr > 0`` mmdet's
    per-image path, which uses them, runs."""
    from projects.codetr.models.task_modules.batched_anchor_targets import \
        supports_batched_targets
    gts, metas = random_batch([2, 1], 0)
    crowd = [InstanceData(bboxes=torch.tensor([[5., 5., 40., 40.]]),
                          labels=torch.zeros(1, dtype=torch.long)),
             InstanceData(bboxes=torch.zeros(0, 4),
                          labels=torch.zeros(0, dtype=torch.long))]
    head = build_head(True)
    anchors, _ = anchors_and_flags(head, metas)
    assert head.assigner.ignore_iof_thr <= 0
    assert supports_batched_targets(head, anchors, crowd, True, False)
    head = build_head(True, assigner=dict(ignore_iof_thr=0.5))
    assert not supports_batched_targets(head, anchors, crowd, True, False)
    assert supports_batched_targets(head, anchors, None, True, False)


def distinct_outputs(dtype, seed):
    """RPN outputs whose sigmoid scores are all distinct (logits a
    permutation of evenly spaced values in [-6, 6]): the NMS's order is its
    scores'."""
    g = torch.Generator().manual_seed(seed)
    sizes = [9 * h * w for h, w in FEATMAP_SIZES]
    logits = torch.stack([
        torch.randperm(sum(sizes), generator=g) for _ in range(3)
    ]).to(dtype) * (12 / sum(sizes)) - 6
    cls_scores = [
        level.reshape(3, h, w, 9).permute(0, 3, 1, 2)
        for level, (h, w) in zip(logits.split(sizes, 1), FEATMAP_SIZES)
    ]
    bbox_preds = [torch.randn(3, 36, h, w, generator=g).to(dtype)
                  for h, w in FEATMAP_SIZES]
    return cls_scores, bbox_preds


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_one_nms_call_keeps_the_per_level_loops_proposals(dtype):
    """The config's ``split_thr`` sends all levels' boxes through one NMS
    call; mmcv's loop over the levels (which it takes from ``split_thr``
    boxes on, forced here with 0) keeps the same proposals in the same
    order wherever no two scores are equal."""
    _, cfg = rpn_cfg()
    assert cfg.nms.split_thr > len(STRIDES) * cfg.nms_pre
    assert cfg.nms.type == 'nms'
    calls = []

    def counted_nms(*args, **kwargs):
        calls.append(len(args[0]))
        return nms(*args, **kwargs)

    one_call, looped = copy.deepcopy(cfg), copy.deepcopy(cfg)
    one_call.nms.type = looped.nms.type = counted_nms
    # no cut after the NMS: what it removed shows in the counts
    one_call.max_per_img = looped.max_per_img = 10**6
    looped.nms.split_thr = 0
    _, metas = random_batch([0, 0, 0], 0)
    ours, ref = build_head(True, dtype), build_head(False, dtype)
    for seed in range(3):
        cls_scores, bbox_preds = distinct_outputs(dtype, seed)
        scores = torch.cat([s.flatten(1) for s in cls_scores], 1).sigmoid()
        for row in scores:  # distinct within each image
            assert row.unique().numel() == row.numel()
        calls.clear()
        a = ours.predict_by_feat(cls_scores, bbox_preds,
                                 batch_img_metas=metas, cfg=one_call)
        assert len(calls) == 3  # one call per image
        num_boxes = list(calls)
        calls.clear()
        b = ref.predict_by_feat(cls_scores, bbox_preds,
                                batch_img_metas=metas, cfg=looped)
        assert len(calls) == 3 * len(STRIDES)  # one per image and level
        for x, y, n in zip(a, b, num_boxes):
            assert 100 < len(y) < 0.9 * n  # NMS removed some, kept many
            assert torch.equal(x.bboxes, y.bboxes)
            assert torch.equal(x.scores, y.scores)
