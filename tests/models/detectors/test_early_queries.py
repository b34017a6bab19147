"""Co-DINO's denoising queries are made before the backbone runs only
where the backbone and neck draw no random numbers in training, so that
the random draws keep the released code's order (docs/design.md,
speed-ups)."""
import pytest
import torch
from codetr_testing import REPO_ROOT, build_model, load_config, make_batch
from mmcv.cnn.bricks import DropPath
from mmdet.registry import MODELS
from torch import nn
from zoo_testing import tiny_zoo_model_cfg

from projects.codetr.models.detectors.co_detr import draws_random_numbers


@pytest.mark.parametrize('module, draws', [
    (nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.0)), False),
    (nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1)), True),
    (nn.Sequential(nn.Dropout2d(0.2)), True),
    (nn.Sequential(DropPath(0.0)), False),
    (nn.Sequential(DropPath(0.3)), True),
])
def test_draws_random_numbers(module, draws):
    assert draws_random_numbers(module) is draws


def test_the_zoos_backbones():
    """ResNet draws nothing; the Swin-L configs' drop path does."""
    for name, draws in (('co_dino_5scale_r50_1x_coco.py', False),
                        ('co_dino_5scale_swin_large_1x_coco.py', True)):
        cfg = load_config(f'{REPO_ROOT}/configs/{name}').model.backbone
        cfg.init_cfg = None
        if draws:  # Swin-L is large: the same block settings, one block
            cfg.update(embed_dims=32, depths=[1, 1, 1, 1],
                       num_heads=[1, 1, 1, 1])
        assert draws_random_numbers(MODELS.build(cfg)) is draws, name


def order_of_calls(model):
    """Which of the backbone and the denoising queries come first in one
    training step of ``model``."""
    calls = []
    for obj, name in ((model, 'extract_feat'),
                      (model.query_head, 'ground_truth_queries')):
        method = getattr(obj, name)

        def wrapper(*args, _method=method, _name=name, **kwargs):
            calls.append(_name)
            return _method(*args, **kwargs)

        setattr(obj, name, wrapper)
    inputs, samples = make_batch(model, image_sizes=((64, 96), (80, 64)),
                                 num_boxes=(3, 2))
    model.train()
    model.loss(inputs, samples)
    return calls


def test_denoising_queries_come_first_only_without_random_features():
    cfg = tiny_zoo_model_cfg('configs/co_dino_5scale_r50_1x_coco.py')
    model = build_model(cfg)
    assert model._early_queries
    assert order_of_calls(model) == ['ground_truth_queries', 'extract_feat']

    model = build_model(cfg)
    model.neck.add_module('drop', DropPath(0.3))  # a neck that draws
    model._early_queries = not draws_random_numbers(model.neck)
    assert not model._early_queries
    # made inside prepare_decoding, after the backbone and the encoder
    assert order_of_calls(model) == ['extract_feat', 'ground_truth_queries']


def test_released_draw_order_with_a_drop_path_backbone():
    """With a backbone that draws (a drop path in ResNet's first stage),
    the denoising queries of a step are those made after the backbone, as
    the released code makes them; made before it, they would differ."""
    cfg = tiny_zoo_model_cfg('configs/co_dino_5scale_r50_1x_coco.py')
    model = build_model(cfg).train()
    model.backbone.layer1.add_module('drop', DropPath(0.5))  # runs last
    model._early_queries = not draws_random_numbers(model.backbone)
    inputs, samples = make_batch(model, image_sizes=((64, 96), (80, 64)),
                                 num_boxes=(3, 2))
    made = []
    method = model.query_head.ground_truth_queries

    def recorded(batch_samples):
        made.append(method(batch_samples)['denoising'])
        return dict(denoising=made[-1])

    model.query_head.ground_truth_queries = recorded
    torch.manual_seed(0)  # the released order, by hand
    model.extract_feat(inputs)
    expected = method(samples)['denoising']
    for early in (False, True):
        model._early_queries = early
        torch.manual_seed(0)
        model.loss(inputs, samples)
        same = all(
            torch.equal(a, b) for a, b in zip(made[-1][:2], expected[:2]))
        assert same is not early
