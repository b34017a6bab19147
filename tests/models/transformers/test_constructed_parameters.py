"""A model as its constructor leaves it (mmdet's init_detector and
DetInferencer build one so when no weights are given) holds no
uninitialised memory: every parameter is finite, and ``level_embed``, which
``init_weights`` draws, starts at zeros."""
import pytest
import torch
from codetr_testing import REPO_ROOT, tiny_model_cfg

CONFIGS = {
    'co_deformable_detr': 'configs/co_deformable_detr_r50_1x_coco.py',
    'co_dino': 'configs/co_dino_5scale_r50_1x_coco.py',
    'co_dab': 'configs/co_dab_deformable_detr_r50_1x_coco.py',
}


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_parameters_are_finite_before_init_weights(name):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    import projects.codetr  # noqa: F401  (registers the modules)
    register_all_modules()
    cfg = tiny_model_cfg(f'{REPO_ROOT}/{CONFIGS[name]}')
    encoder = cfg.query_head.transformer.encoder
    encoder.num_cp = min(encoder.get('num_cp', -1), encoder.num_layers)
    model = MODELS.build(cfg)
    transformer = model.query_head.transformer
    assert torch.equal(transformer.level_embed,
                       torch.zeros_like(transformer.level_embed))
    bad = [n for n, p in model.named_parameters() if not p.isfinite().all()]
    assert not bad, bad
    torch.manual_seed(0)
    model.init_weights()
    assert transformer.level_embed.std() > 0.5  # drawn from N(0, 1)
