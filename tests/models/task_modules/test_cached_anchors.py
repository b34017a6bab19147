"""``CachedAnchorGenerator`` gives mmdet's anchors and valid flags, and a
Co-DETR step with it gives the same losses, step after step (a consumer
modifying the shared anchors in place would change the second step)."""
import copy

import pytest
import torch
from codetr_testing import build_model, make_batch, tiny_model_cfg
from mmdet.models.task_modules.prior_generators import AnchorGenerator

from projects.codetr.models.task_modules import CachedAnchorGenerator

RPN = dict(
    octave_base_scale=4,
    scales_per_octave=3,
    ratios=[0.5, 1.0, 2.0],
    strides=[8, 16, 32, 64, 128])
ATSS = dict(
    ratios=[1.0],
    octave_base_scale=8,
    scales_per_octave=1,
    strides=[8, 16, 32, 64, 128])


@pytest.mark.parametrize('settings', [RPN, ATSS])
def test_anchors_and_flags_are_mmdets(settings):
    ours, theirs = CachedAnchorGenerator(**settings), AnchorGenerator(
        **settings)
    for sizes, pad_shape in [([(13, 17), (7, 9), (4, 5), (2, 3), (1, 2)],
                              (100, 130)),
                             ([(13, 17), (7, 9), (4, 5), (2, 3), (1, 2)],
                              (60, 90)),  # part of each level invalid
                             ([(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)],
                              (128, 160))]:
        for _ in range(2):  # computed, then from the cache
            for a, b in zip(
                    ours.grid_priors(sizes, device='cpu'),
                    theirs.grid_priors(sizes, device='cpu')):
                assert torch.equal(a, b)
            for a, b in zip(
                    ours.valid_flags(sizes, pad_shape, device='cpu'),
                    theirs.valid_flags(sizes, pad_shape, device='cpu')):
                assert torch.equal(a, b)
    first = ours.grid_priors(sizes, device='cpu')
    assert all(a is b for a, b in zip(first, ours.grid_priors(sizes,
                                                              device='cpu')))


def test_cache_is_bounded_and_survives_inference_mode():
    gen = CachedAnchorGenerator(max_cached=3, **ATSS)
    with torch.inference_mode():
        first = gen.single_level_grid_priors((4, 5), 0, device='cpu')
    assert not first.is_inference()  # usable in training afterwards
    for h in range(5, 10):
        gen.single_level_grid_priors((h, 5), 0, device='cpu')
    assert len(gen._priors) == 3  # least recently used dropped
    again = gen.single_level_grid_priors((4, 5), 0, device='cpu')
    assert again is not first and torch.equal(again, first)


def uncached(cfg):
    cfg = copy.deepcopy(cfg)
    cfg.rpn_head.anchor_generator.type = 'AnchorGenerator'
    for head in cfg.bbox_head.values():
        head.anchor_generator.type = 'AnchorGenerator'
    return cfg


def test_training_losses_are_unchanged_step_after_step():
    cfg = tiny_model_cfg()
    assert cfg.rpn_head.anchor_generator.type == 'CachedAnchorGenerator'
    models = [build_model(cfg).train(), build_model(uncached(cfg)).train()]
    for seed in range(2):
        inputs, samples = make_batch(models[0], seed=seed)
        losses = []
        for model in models:
            torch.manual_seed(seed)  # the RPN and RoI samplers draw
            losses.append(model.loss(inputs, samples))
        assert losses[0].keys() == losses[1].keys()
        for key, value in losses[1].items():
            values = value if isinstance(value, list) else [value]
            mine = losses[0][key]
            mine = mine if isinstance(mine, list) else [mine]
            for a, b in zip(mine, values):
                assert torch.equal(a, b), (seed, key)
