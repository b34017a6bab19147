"""``DeviceRandomSampler``: mmdet's random subsets from keys drawn on the
gallery's device (the CUDA generator checks are in tests/gpu)."""
import math

import numpy as np
import pytest
import torch
from codetr_testing import load_config
from mmdet.models.task_modules import RandomSampler
from mmengine.structures import InstanceData

from projects.codetr.models.task_modules import DeviceRandomSampler

SHAPES_CONFIG = 'configs/shapes/co_deformable_detr_r50_1x_shapes.py'
SIGMAS = 5


def sampler(cls=DeviceRandomSampler, **kwargs):
    kwargs = dict(num=64, pos_fraction=0.25, add_gt_as_proposals=True,
                  **kwargs)
    return cls(**kwargs)


def test_inclusion_and_first_place_are_uniform():
    """Every element is picked with probability num / n, and comes first
    with probability 1 / n (random order), within 5 binomial sigmas."""
    torch.manual_seed(0)
    n, num, draws = 20, 7, 4000
    gallery = torch.arange(100, 100 + n)
    picked = torch.zeros(n)
    first = torch.zeros(n)
    for _ in range(draws):
        out = sampler().random_choice(gallery, num) - 100
        picked[out] += 1
        first[out[0]] += 1
    for counts, p in ((picked, num / n), (first, 1 / n)):
        sigma = math.sqrt(draws * p * (1 - p))
        assert (counts - draws * p).abs().max() < SIGMAS * sigma, counts


@pytest.mark.parametrize('kind', ['tensor', 'int32 tensor', 'ndarray',
                                  'list'])
def test_subset_without_repeats_of_mmdet_type(kind):
    values = [3, 17, 4, 99, 42, 8, 15, 23, 16, 5]
    gallery = dict(tensor=torch.tensor(values),
                   ndarray=np.array(values, dtype=np.int32),
                   list=values)[kind.split()[-1]]
    if kind == 'int32 tensor':
        gallery = gallery.int()
    torch.manual_seed(0)
    ref = sampler(RandomSampler).random_choice(gallery, 6)
    for num in (0, 1, 6, len(values)):
        out = sampler().random_choice(gallery, num)
        assert type(out) is type(ref) and out.dtype == ref.dtype
        if isinstance(out, torch.Tensor):
            assert out.device == ref.device
        assert out.shape == (num, )
        assert len(set(out.tolist())) == num  # no repeats
        assert set(out.tolist()) <= set(values)
    with pytest.raises(AssertionError):  # as mmdet's
        sampler().random_choice(gallery, len(values) + 1)


def roi_head_and_inputs():
    """A small RoI head of the shapes config (3 classes, narrow FCs,
    ``num=64``: 16 positives at most) and two 128x128 images whose few
    positives (the boxes and 5 jittered copies each) are all taken."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    import projects.codetr  # noqa: F401  (registers the modules)
    register_all_modules()
    cfg = load_config(SHAPES_CONFIG).model.roi_head.rcnn
    cfg.bbox_head.update(num_classes=3, fc_out_channels=32)
    cfg.train_cfg.sampler.num = 64
    torch.manual_seed(0)
    head = MODELS.build(cfg).train()
    assert type(head.bbox_sampler) is DeviceRandomSampler

    gen = torch.Generator().manual_seed(1)
    strides = cfg.bbox_roi_extractor.featmap_strides
    x = tuple(torch.randn(2, 256, 128 // s, 128 // s, generator=gen)
              for s in strides)
    proposals, samples = [], []
    for _ in range(2):
        gt = torch.tensor([[10., 12., 60., 70.], [70., 60., 120., 110.]])
        jitter = gt.repeat(5, 1) + torch.randn(10, 4, generator=gen)
        xy = torch.rand(190, 2, generator=gen) * 100
        others = torch.cat([xy, xy + 4 + torch.rand(190, 2, generator=gen)
                            * 20], dim=1)  # small boxes: negatives
        proposals.append(InstanceData(bboxes=torch.cat([jitter, others])))
        sample = InstanceData(bboxes=gt, labels=torch.tensor([0, 2]))
        samples.append(sample)
    return head, x, proposals, samples


def test_roi_head_takes_all_positives_as_mmdet():
    from mmdet.structures import DetDataSample
    head, x, proposals, gts = roi_head_and_inputs()
    batch = []
    for gt in gts:
        sample = DetDataSample(metainfo=dict(img_shape=(128, 128)))
        sample.gt_instances = gt
        batch.append(sample)

    def positives(pos):
        return [{tuple(c) for c in pos.coords[i][pos.labels[i] < 3].tolist()}
                for i in range(2)]

    losses, ours = head.loss_and_pos_coords(x, proposals, batch)
    assert all(torch.isfinite(v).all() for v in losses.values()), losses
    assert ours.coords.shape == (2, 64, 4)  # 64 sampled RoIs per image
    head.bbox_sampler = sampler(RandomSampler)
    _, ref = head.loss_and_pos_coords(x, proposals, batch)
    assert positives(ours) == positives(ref)
    assert all(2 <= len(p) < 16 for p in positives(ours))


@pytest.mark.parametrize('num_pos', [0, 3, 16, 40])
def test_one_draw_per_group_whatever_the_count(monkeypatch, num_pos):
    """Positives below the wanted 16 (all taken, as mmdet) and above it,
    negatives above their wanted count: one key draw per group each time,
    so the generator advances alike for any count."""
    from mmdet.models.task_modules import AssignResult
    gt_inds = torch.zeros(200, dtype=torch.long)
    gt_inds[:num_pos] = 1
    assign = AssignResult(1, gt_inds, torch.ones(200), torch.zeros(200))
    priors = torch.rand(200, 4) * 10
    sampler_ = DeviceRandomSampler(
        num=64, pos_fraction=0.25, add_gt_as_proposals=False)
    draws = []
    rand = torch.rand
    monkeypatch.setattr(torch, 'rand',
                        lambda *a, **k: draws.append(1) or rand(*a, **k))
    result = sampler_.sample(
        assign, InstanceData(priors=priors),
        InstanceData(bboxes=torch.zeros(1, 4), labels=torch.zeros(1).long()))
    assert len(draws) == 2
    # all positives when at most 16 (mmdet's), else 16 of them
    if num_pos <= 16:
        assert result.pos_inds.tolist() == list(range(num_pos))
    assert len(result.pos_inds) == min(num_pos, 16)
    assert (gt_inds[result.pos_inds] == 1).all()
    assert len(result.neg_inds) == 64 - len(result.pos_inds)
    assert (gt_inds[result.neg_inds] == 0).all()


def test_sample_picks_uniformly_in_both_groups():
    """Through ``sample()`` (mmdet's entry point): 40 positives of which 16
    are wanted, 160 negatives of which 48: each is picked with probability
    16 / 40 and 48 / 160, within 5 binomial sigmas."""
    from mmdet.models.task_modules import AssignResult
    torch.manual_seed(0)
    gt_inds = torch.zeros(200, dtype=torch.long)
    gt_inds[torch.arange(0, 200, 5)] = 1  # 40 positives, spread out
    assign = AssignResult(1, gt_inds, torch.ones(200), torch.zeros(200))
    priors = InstanceData(priors=torch.rand(200, 4) * 10)
    gts = InstanceData(bboxes=torch.zeros(1, 4), labels=torch.zeros(1).long())
    sampler_ = DeviceRandomSampler(
        num=64, pos_fraction=0.25, add_gt_as_proposals=False)
    picked = torch.zeros(200)
    draws = 2000
    for _ in range(draws):
        result = sampler_.sample(assign, priors, gts)
        picked[result.pos_inds] += 1
        picked[result.neg_inds] += 1
    for group, p in ((gt_inds == 1, 16 / 40), (gt_inds == 0, 48 / 160)):
        sigma = math.sqrt(draws * p * (1 - p))
        deviation = (picked[group] - draws * p).abs().max()
        assert deviation < SIGMAS * sigma, picked[group]
