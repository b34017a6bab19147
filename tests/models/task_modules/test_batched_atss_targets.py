"""CoATSSHead's ATSS targets of the whole batch at once (``batched_images``,
on by default) against mmdet's per-image pipeline (``batched_images=False``,
the reference), tensor for tensor, and the losses computed from them.

Batches mix image sizes inside one padded shape (padding invalidates
anchors), ground-truth counts 0, 1 and more, tiny boxes, boxes touching the
image border, duplicate boxes (equal IoUs: the first truth wins), small
images whose coarse levels have fewer valid anchors than ``topk``, in
float32 and float64. Integer boxes centred halfway between anchor centres
put equal distances at the k-th place of the top-k, where ``torch.topk``'s
choice depends on its input (the batched path's has the invalid anchors
in it): those batches are compared with both paths' ``topk`` made to take
the lowest indices, and unpadded ones also with the plain top-k.
"""
import copy
import math
from contextlib import nullcontext

import pytest
import torch
from codetr_testing import WaitCounter, tiny_model_cfg
from mmdet.registry import MODELS
from mmengine.structures import InstanceData
from torch.overrides import TorchFunctionMode

import projects.codetr  # noqa: F401  (registers the head)
from projects.codetr.models.task_modules import BatchedATSSAssigner

STRIDES = (8, 16, 32, 64, 128)  # the config's ATSS anchor strides
NUM_CLASSES = 3


class LowestIndexTopk(TorchFunctionMode):
    """``Tensor.topk(k, dim, largest=False)`` taking the lowest indices
    among equal values, a choice that does not depend on the invalid
    anchors in the batched path's input."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not torch.Tensor.topk:
            return func(*args, **kwargs)
        values, k = args[:2]
        dim = kwargs.get('dim', args[2] if len(args) > 2 else -1)
        assert kwargs.get('largest') is False
        index = values.argsort(dim=dim, stable=True).narrow(dim, 0, k)
        return values.gather(dim, index), index


def build_head(batched: bool, dtype=torch.float32, **cfg) -> torch.nn.Module:
    head_cfg = copy.deepcopy(tiny_model_cfg().bbox_head.atss)
    head_cfg.update(
        num_classes=NUM_CLASSES,
        in_channels=32,
        feat_channels=32,
        batched_images=batched,
        **cfg)
    torch.manual_seed(0)
    return MODELS.build(head_cfg).to(dtype).train()


def head_inputs(shapes, boxes, dtype, seed: int, ignored=None):
    """Random head outputs for images of ``shapes`` (h, w) padded to one
    batch shape, and their ground truths (``boxes``: (n, 4) per image)."""
    gen = torch.Generator().manual_seed(seed)
    height, width = max(s[0] for s in shapes), max(s[1] for s in shapes)
    metas = [
        dict(img_shape=s, pad_shape=s, batch_input_shape=(height, width))
        for s in shapes
    ]
    gts = [
        InstanceData(
            bboxes=torch.as_tensor(b, dtype=dtype).view(-1, 4),
            labels=torch.randint(0, NUM_CLASSES, (len(b), ), generator=gen))
        for b in boxes
    ]
    sizes = [(math.ceil(height / s), math.ceil(width / s)) for s in STRIDES]

    def maps(channels, scale=1.0):
        return [
            torch.randn(len(shapes), channels, h, w, generator=gen,
                        dtype=dtype) * scale for h, w in sizes
        ]

    return (maps(NUM_CLASSES), maps(4, 0.1), maps(1), gts, metas, ignored)


def random_boxes(num: int, height: int, width: int,
                 gen: torch.Generator) -> torch.Tensor:
    """Random float boxes inside the image, 2% to 32% of its sides."""
    xy = torch.rand(num, 2, generator=gen) * torch.tensor([width, height])
    wh = (torch.rand(num, 2, generator=gen) * 0.3 + 0.02) * torch.tensor(
        [width, height])
    xy = xy * 0.68
    return torch.cat([xy, xy + wh], dim=1)


def special_boxes(height: int, width: int) -> torch.Tensor:
    """Tiny boxes, boxes touching or covering the border, duplicates."""
    return torch.tensor([
        [10.0, 12.0, 11.5, 12.75],  # tiny
        [0.0, 0.0, 40.0, 30.0],  # top-left corner
        [width - 50.0, height - 20.0, width, height],  # bottom-right
        [0.0, 0.0, width, height],  # the whole image
        [30.0, 40.0, 90.0, 70.0],  # duplicated: the first one wins
        [30.0, 40.0, 90.0, 70.0],
        [30.0, 40.0, 90.0, 70.0],
        # anchor centre (8, 8) 0.005 inside: within mmdet's 0.01 margin
        [7.995, 7.995, 23.995, 23.995],
    ])


def halfway_boxes(num: int, height: int, width: int,
                  gen: torch.Generator) -> torch.Tensor:
    """Integer boxes centred halfway between anchor centres (multiples of
    the stride, in both directions): mirror-image anchors at equal
    distances, often at the k-th place."""
    boxes = []
    for _ in range(num):
        stride = STRIDES[int(torch.randint(0, 3, (1, ), generator=gen))]
        cx = (int(torch.randint(1, width // stride - 1, (1, ),
                                generator=gen)) + 0.5) * stride
        cy = (int(torch.randint(1, height // stride - 1, (1, ),
                                generator=gen)) + 0.5) * stride
        half_w, half_h = torch.randint(2, 40, (2, ), generator=gen).tolist()
        boxes.append([cx - half_w, cy - half_h, cx + half_w, cy + half_h])
    return torch.tensor(boxes).clamp(min=0)


def batch_case(case: str, seed: int):
    """(image shapes, boxes per image) of one kind of batch."""
    gen = torch.Generator().manual_seed(seed)
    if case == 'small':  # coarse levels with fewer valid anchors than topk
        shapes = [(64, 80), (128, 112), (96, 128)]
        counts = [3, 1, 0]
    else:  # every level with topk valid anchors or more
        shapes = [(300, 400), (264, 330), (400, 288)]
        counts = [6, 0, 1]
    if case == 'special':
        boxes = [special_boxes(*shapes[0]), special_boxes(*shapes[1])[:0],
                 special_boxes(*shapes[2])[-3:]]
    elif case == 'halfway':
        boxes = [halfway_boxes(n, *s, gen) for n, s in zip(counts, shapes)]
    else:
        boxes = [random_boxes(n, *s, gen) for n, s in zip(counts, shapes)]
    if seed % 2:  # two images as well as three
        shapes, boxes = shapes[:2], boxes[:2]
    return shapes, boxes


def targets_and_losses(batched: bool, inputs, dtype, **cfg):
    head = build_head(batched, dtype, **cfg)
    losses = head.loss_by_feat(*inputs)
    return head._targets, losses


def assert_same_targets(ours, ref) -> None:
    """Every output of ``get_targets``, level by level, exactly."""
    names = ('anchors', 'labels', 'label_weights', 'bbox_targets',
             'bbox_weights')
    for name, our_levels, ref_levels in zip(names, ours, ref):
        assert len(our_levels) == len(ref_levels), name
        for level, (a, b) in enumerate(zip(our_levels, ref_levels)):
            assert a.dtype == b.dtype and a.shape == b.shape, (name, level)
            assert torch.equal(a, b), (name, level)
    assert int(ours[-1]) == ref[-1]


def assert_same_losses(ours, ref) -> None:
    assert ours.keys() == ref.keys()
    for key, value in ref.items():
        assert ours[key].dtype == value.dtype, key
        torch.testing.assert_close(
            ours[key], value, rtol=1e-6, atol=1e-7, msg=key)


# integer boxes centred halfway between anchors: ties at the k-th place
TIED_CASES = ('special', 'halfway')


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('case', ['random', 'small', *TIED_CASES])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_targets_and_losses_match_mmdet(case, seed, dtype):
    inputs = head_inputs(*batch_case(case, seed), dtype, seed)
    with LowestIndexTopk() if case in TIED_CASES else nullcontext():
        ours, our_losses = targets_and_losses(True, inputs, dtype)
        ref, ref_losses = targets_and_losses(False, inputs, dtype)
    assert isinstance(ours[-1], torch.Tensor)  # not read back
    assert_same_targets(ours, ref)
    assert_same_losses(our_losses, ref_losses)
    if case != 'special' or seed % 2 == 0:  # boxes in the batch
        assert ref[-1] > len(inputs[3]) and our_losses['loss_bbox'] > 0


def kth_place_ties(shapes, boxes, topk: int = 9) -> int:
    """How many (box, level) top-k selections of the first image have
    equal distances at the k-th place and beyond (an ambiguous set)."""
    head = build_head(True)
    height, width = max(s[0] for s in shapes), max(s[1] for s in shapes)
    sizes = [(math.ceil(height / s), math.ceil(width / s)) for s in STRIDES]
    anchors = head.prior_generator.grid_priors(sizes, device='cpu')
    ties = 0
    centres = (boxes[0][:, :2] + boxes[0][:, 2:]) / 2
    for level in anchors:
        points = (level[:, :2] + level[:, 2:]) / 2
        distances = torch.cdist(centres, points).sort(dim=1).values
        ties += int((distances[:, topk - 1] == distances[:, topk]).sum())
    return ties


@pytest.mark.parametrize('case', TIED_CASES)
def test_ties_on_unpadded_images_are_mmdets(case):
    """The tied cases do tie at the k-th place; where no anchor is
    invalid, both paths give ``topk`` the same distances, and the plain
    top-k's choice is the same."""
    for seed in range(3):
        shapes, boxes = batch_case(case, seed)
        assert kth_place_ties(shapes, boxes) > 0
        shapes = [shapes[0]] * len(shapes)  # no padding
        inputs = head_inputs(shapes, boxes, torch.float32, seed)
        ours, our_losses = targets_and_losses(True, inputs, torch.float32)
        ref, ref_losses = targets_and_losses(False, inputs, torch.float32)
        assert_same_targets(ours, ref)
        assert_same_losses(our_losses, ref_losses)


def test_no_host_reads():
    shapes, boxes = batch_case('random', 0)
    cls_scores, _, _, gts, metas, _ = head_inputs(shapes, boxes,
                                                  torch.float32, 0)
    waits = []
    for batched in (True, False):
        head = build_head(batched)
        anchors, valid_flags = head.get_anchors(
            [score.shape[-2:] for score in cls_scores], metas, device='cpu')
        with WaitCounter() as counter:
            head.get_targets(anchors, valid_flags, gts, metas)
        waits.append(counter.waits)
    assert waits[0] == [] and len(waits[1]) > 10, waits


@pytest.mark.parametrize('iof_thr', [-1, 0.5])
def test_ignored_boxes(iof_thr):
    """Ignored boxes change mmdet's assignment only with ignore_iof_thr > 0:
    then the per-image path runs; else they are rightly left out."""
    shapes, boxes = batch_case('random', 0)
    ignored = [
        InstanceData(bboxes=torch.tensor([[20.0, 20.0, 120.0, 150.0]])),
        None,
        InstanceData(bboxes=torch.zeros(0, 4))
    ]
    inputs = head_inputs(shapes, boxes, torch.float32, 0, ignored)
    assigner = dict(type='ATSSAssigner', topk=9, ignore_iof_thr=iof_thr)
    train_cfg = dict(
        tiny_model_cfg().bbox_head.atss.train_cfg, assigner=assigner)
    ours, our_losses = targets_and_losses(
        True, inputs, torch.float32, train_cfg=train_cfg)
    ref, ref_losses = targets_and_losses(
        False, inputs, torch.float32, train_cfg=train_cfg)
    assert isinstance(ours[-1], torch.Tensor) == (iof_thr < 0)
    assert_same_targets(ours, ref)
    assert_same_losses(our_losses, ref_losses)


def test_pos_weight_and_border():
    shapes, boxes = batch_case('special', 0)
    inputs = head_inputs(shapes, boxes, torch.float32, 0)
    train_cfg = dict(
        tiny_model_cfg().bbox_head.atss.train_cfg,
        pos_weight=2.0,
        allowed_border=16)
    with LowestIndexTopk():  # the special boxes tie
        ours, _ = targets_and_losses(
            True, inputs, torch.float32, train_cfg=train_cfg)
        ref, _ = targets_and_losses(
            False, inputs, torch.float32, train_cfg=train_cfg)
    assert_same_targets(ours, ref)
    assert (torch.cat(ref[2], 1) == 2.0).any()


def test_mmdet_per_level_loss_gets_a_number():
    inputs = head_inputs(*batch_case('random', 0), torch.float32, 0)
    ours, our_losses = targets_and_losses(
        True, inputs, torch.float32, batched_levels=False)
    ref, ref_losses = targets_and_losses(
        False, inputs, torch.float32, batched_levels=False)
    assert isinstance(ours[-1], int)
    assert_same_targets(ours, ref)
    for key, value in ref_losses.items():
        for a, b in zip(our_losses[key], value):
            assert torch.equal(a, b), key


def test_other_samplers_and_cost_assigner_are_refused():
    train_cfg = tiny_model_cfg().bbox_head.atss.train_cfg
    with pytest.raises(ValueError, match='PseudoSampler'):
        build_head(
            True,
            train_cfg=dict(
                train_cfg,
                sampler=dict(type='RandomSampler', num=16, pos_fraction=0.5)))
    with pytest.raises(ValueError, match='alpha'):
        build_head(
            True,
            train_cfg=dict(
                train_cfg,
                assigner=dict(type='ATSSAssigner', topk=9, alpha=0.8)))
    assert build_head(False, train_cfg=dict(
        train_cfg, assigner=dict(type='ATSSAssigner', topk=9,
                                 alpha=0.8))).batched_assigner is None


def test_batched_by_default():
    assert build_head(True).batched_images
    cfg = tiny_model_cfg().bbox_head.atss
    assert 'batched_images' not in cfg
    head = MODELS.build(
        dict(cfg, num_classes=NUM_CLASSES, in_channels=32, feat_channels=32))
    assert head.batched_images and head.batched_assigner is not None


def test_padding_is_never_assigned():
    """Padded ground truths are masked whatever their values: padding with
    copies of real boxes changes nothing."""
    shapes, boxes = batch_case('random', 0)
    head = build_head(True)
    height, width = max(s[0] for s in shapes), max(s[1] for s in shapes)
    sizes = [(math.ceil(height / s), math.ceil(width / s)) for s in STRIDES]
    levels = head.prior_generator.grid_priors(sizes, device='cpu')
    anchors = torch.cat(levels)
    valid = torch.ones(2, len(anchors), dtype=torch.bool)
    real, other = boxes[0][:2], boxes[0][2:4]
    # (2, 4, 4): padded with other boxes, and real ones repeated
    gt_bboxes = torch.stack([torch.cat([real, other]), real.repeat(2, 1)])
    gt_labels = torch.tensor([[0, 1, 2, 2], [0, 1, 2, 2]])
    gt_valid = torch.tensor([[True, True, False, False],
                             [True, True, True, True]])
    assigner = head.batched_assigner
    num_level_anchors = [len(level) for level in levels]
    gt_inds, labels = assigner.assign(anchors, valid, num_level_anchors,
                                      gt_bboxes, gt_labels, gt_valid)
    ref_inds, ref_labels = assigner.assign(anchors, valid[:1],
                                           num_level_anchors,
                                           gt_bboxes[:1, :2],
                                           gt_labels[:1, :2],
                                           gt_valid[:1, :2])
    assert (ref_inds > 0).any()
    assert torch.equal(gt_inds[0], ref_inds[0])
    assert torch.equal(labels[0], ref_labels[0])
    # duplicates that count: the first of equal IoUs wins
    assert torch.equal(gt_inds[1], gt_inds[0])


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_iou_threshold_is_mmdets_on_full_candidate_sets(dtype):
    """mmdet's mean + std bit for bit where every slot is a candidate (the
    std is then torch's, not the two-pass one, whose last bits differ);
    up to rounding on partial sets."""
    gen = torch.Generator().manual_seed(0)
    overlaps = torch.rand(4, 45, 7, generator=gen, dtype=dtype)**3
    full = torch.ones_like(overlaps, dtype=torch.bool)
    threshold = BatchedATSSAssigner._iou_threshold(overlaps, full)
    for image in range(4):
        ref = overlaps[image].mean(0) + overlaps[image].std(0)
        assert torch.equal(threshold[image], ref)
    partial = full.clone()
    partial[:, 30:] = False
    threshold = BatchedATSSAssigner._iou_threshold(overlaps, partial)
    ref = overlaps[:, :30].mean(1) + overlaps[:, :30].std(1)
    torch.testing.assert_close(threshold, ref)


@pytest.mark.parametrize('seed', range(4))
def test_assigner_matches_mmdet_on_any_valid_anchors(seed):
    """BatchedATSSAssigner alone against mmdet's ATSSAssigner on the valid
    anchors only, with valid anchors scattered at random (levels short of
    topk included) and boxes over invalid ones."""
    gen = torch.Generator().manual_seed(seed)
    head = build_head(True)
    sizes = [(math.ceil(200 / s), math.ceil(240 / s)) for s in STRIDES]
    levels = head.prior_generator.grid_priors(sizes, device='cpu')
    num_level_anchors = [len(level) for level in levels]
    anchors = torch.cat(levels)
    keep = torch.cat([
        torch.rand(len(level), generator=gen) < fraction
        for level, fraction in zip(levels, (0.5, 0.3, 0.2, 0.3, 0.5))
    ])
    valid = torch.stack([keep, torch.rand(len(anchors), generator=gen) < 0.6])
    counts = (5, 2)
    boxes = [random_boxes(n, 200, 240, gen) for n in counts]
    labels = [torch.randint(0, NUM_CLASSES, (n, ), generator=gen)
              for n in counts]
    gt_bboxes = torch.stack(
        [torch.cat([b, b.new_zeros(5 - len(b), 4)]) for b in boxes])
    gt_labels = torch.stack([torch.cat([b, b.new_zeros(5 - len(b))])
                             for b in labels])
    gt_valid = torch.arange(5) < torch.tensor(counts)[:, None]
    gt_inds, assigned = head.batched_assigner.assign(
        anchors, valid, num_level_anchors, gt_bboxes, gt_labels, gt_valid)
    for i in range(2):
        inside = [int(v.sum()) for v in valid[i].split(num_level_anchors)]
        assert min(inside) < 9  # a level short of topk
        ref = head.assigner.assign(
            InstanceData(priors=anchors[valid[i]]), inside,
            InstanceData(bboxes=boxes[i], labels=labels[i]))
        assert (ref.gt_inds > 0).any()
        assert torch.equal(gt_inds[i][valid[i]], ref.gt_inds)
        assert torch.equal(assigned[i][valid[i]], ref.labels)
        assert not gt_inds[i][~valid[i]].any()
