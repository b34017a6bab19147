"""The merged optimizer groups keep mmengine's per-parameter options."""
import copy

import pytest
import torch
from codetr_testing import (R50_CONFIG, REPO_ROOT, build_model, load_config,
                            tiny_model_cfg)
from mmengine.optim import build_optim_wrapper

CODINO = f'{REPO_ROOT}/configs/co_dino_5scale_r50_1x_coco.py'


def options_by_param(optimizer) -> dict:
    return {
        id(p): {k: v
                for k, v in group.items() if k != 'params'}
        for group in optimizer.param_groups for p in group['params']
    }


@pytest.mark.parametrize('path', [R50_CONFIG, CODINO])
def test_merged_groups_equal_mmengines_per_parameter_groups(path):
    import projects.codetr  # noqa: F401  (registers the constructor)
    cfg = load_config(path).optim_wrapper
    assert cfg.constructor == 'MergedGroupsOptimWrapperConstructor'
    model_cfg = tiny_model_cfg(path)
    model_cfg.query_head.transformer.encoder.pop('num_cp', None)
    model = build_model(model_cfg).train()
    merged = build_optim_wrapper(model, copy.deepcopy(cfg))
    reference_cfg = copy.deepcopy(cfg)
    reference_cfg.pop('constructor')
    reference = build_optim_wrapper(model, reference_cfg)

    groups = merged.optimizer.param_groups
    # mmengine: one group per parameter tensor
    assert all(len(g['params']) == 1 for g in reference.optimizer.param_groups)
    lrs = sorted({g['lr'] for g in groups})
    assert len(groups) <= 4 and lrs == pytest.approx([2e-5, 2e-4])
    assert options_by_param(merged.optimizer) == options_by_param(
        reference.optimizer)
    assert sum(len(g['params']) for g in groups) == len(
        reference.optimizer.param_groups)

    # one AdamW step from the same gradients: the same parameters
    torch.manual_seed(0)
    grads = [torch.randn_like(p) for p in model.parameters()]
    start = [p.detach().clone() for p in model.parameters()]
    after = []
    for wrapper in (merged, reference):
        with torch.no_grad():
            for p, p0 in zip(model.parameters(), start):
                p.copy_(p0)
        for p, g in zip(model.parameters(), grads):
            p.grad = g.clone()
        wrapper.step()
        after.append([p.detach().clone() for p in model.parameters()])
    changed = 0
    for a, b, p0 in zip(*after, start):
        assert torch.equal(a, b)
        changed += int(not torch.equal(a, p0))
    assert changed > 0
