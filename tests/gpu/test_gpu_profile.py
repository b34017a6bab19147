"""``profile_step`` on a GPU step: the host's waits are found and placed.

A CPU step has no CUDA runtime calls, so only here can the profile's wait
accounting be seen to work: the one-to-one matching copies its costs to
the host (``linear_sum_assignment`` runs there), so the stage holding it
waits, and no stage waits longer than it runs.
"""
import copy

import pytest
from codetr_testing import (REPO_ROOT, build_model, load_config, make_batch,
                            profiled_training_step)
from zoo_testing import shrink_model_cfg

from projects.codetr.analysis.step_profile import format_profile, profile_step

pytestmark = pytest.mark.gpu


def test_profile_finds_the_matching_wait_on_a_gpu_step():
    cfg = load_config(f'{REPO_ROOT}/configs/co_deformable_detr_r50_1x_coco.py')
    model = build_model(shrink_model_cfg(copy.deepcopy(cfg.model), 3,
                                         40)).cuda().train()
    step = profiled_training_step(model, *make_batch(model, num_classes=3))
    result = profile_step(model, step, steps=2)
    assert result['launches'] > 100
    assert result['waits'] >= 1
    assert 0 < result['wait_ms'] <= result['wall_ms']
    stages = result['stages']
    assert stages['CoDeformDETRHead.loss_by_outputs']['wait_ms'] > 0
    for name, stage in stages.items():
        assert 0 <= stage['wait_ms'] <= stage['host_ms'] * 1.001 + 1e-3, name
    assert sum(s['wait_ms'] for s in stages.values()) <= result['wait_ms'] \
        * 1.001 + 1e-3
    assert 'waiting' in format_profile('k2', result)
