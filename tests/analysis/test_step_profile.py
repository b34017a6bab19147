"""projects/codetr/analysis/step_profile.py attributes a training step to
its stages."""
from codetr_testing import (build_model, make_batch, profiled_training_step,
                            tiny_model_cfg)

from projects.codetr.analysis.step_profile import format_profile, profile_step


def test_stages_of_a_co_detr_step_are_labelled_and_restored():
    model = build_model(tiny_model_cfg()).train()
    step = profiled_training_step(model, *make_batch(model))
    result = profile_step(model, step, steps=2)
    assert len(step.calls) == 3  # one warm-up outside the profile
    expected = {
        'CoDeformDETRHead.ground_truth_queries', 'CoDETR.extract_feat',
        'CoDeformDETRHead.prepare_decoding',
        'CoDeformableDetrTransformer.forward_decoder',
        'CoDeformDETRHead.loss_by_outputs',
        'CoDeformDETRHead.loss_aux_by_feat',
        'CoDETR.rpn_loss_and_proposals',
        'CoStandardRoIHead.loss_and_pos_coords',
        'CoATSSHead.loss_and_pos_coords', 'backward', 'optimizer'
    }
    assert set(result['stages']) == expected
    total = sum(s['host_ms'] for s in result['stages'].values())
    assert 0 < total <= result['wall_ms'] * 1.01
    assert all(s['host_ms'] > 0 for s in result['stages'].values())
    # no CUDA runtime on a CPU step: nothing to wait for
    assert result['wait_ms'] == 0
    assert all(s['wait_ms'] == 0 for s in result['stages'].values())
    # the labelling wrappers are gone: the methods are the classes' again
    assert 'loss_aux_by_feat' not in vars(model.query_head)
    assert 'forward_decoder' not in vars(model.query_head.transformer)
    assert 'extract_feat' not in vars(model)
    assert 'profile of tiny' in format_profile('tiny', result)
