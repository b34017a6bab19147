"""One decoder pass for the main and the positive queries
(``joint_decoding=True``, the default) gives the losses and gradients of two
passes, main queries first and the positive queries after them, as the
released code decodes them (``joint_decoding=False``).

In float64 the two differ by the order of floating-point sums only.
"""
import pytest
import torch
from codetr_testing import build_model, make_batch, tiny_model_cfg
from zoo_testing import tiny_zoo_model_cfg

CONFIGS = {
    'co_deformable_detr': None,  # codetr_testing.tiny_model_cfg
    'co_dino': 'configs/co_dino_5scale_r50_1x_coco.py',
    'co_dab_deformable_detr': 'configs/co_dab_deformable_detr_r50_1x_coco.py',
}


def _double_model(config):
    cfg = tiny_model_cfg() if config is None else tiny_zoo_model_cfg(config)
    return build_model(cfg).double().train()


def _batch(model, num_boxes=(3, 2)):
    inputs, samples = make_batch(
        model, image_sizes=((64, 96), (80, 64)), num_boxes=num_boxes)
    for sample in samples:
        sample.gt_instances.bboxes = sample.gt_instances.bboxes.double()
    return inputs.double(), samples


def _losses_and_grads(model, inputs, samples, joint):
    """Losses, their gradients, and the number of decoder passes."""
    model.query_head.joint_decoding = joint
    passes = []
    hook = model.query_head.transformer.decoder.register_forward_hook(
        lambda *_: passes.append(1))
    try:
        model.zero_grad()
        torch.manual_seed(0)  # the same random samples in both runs
        losses = model.loss(inputs, samples)
    finally:
        hook.remove()
    total = sum(v for k, v in losses.items() if 'loss' in k)
    total.backward()
    grads = {
        name: p.grad.clone()
        for name, p in model.named_parameters() if p.grad is not None
    }
    return losses, grads, len(passes)


@pytest.mark.parametrize('family', sorted(CONFIGS))
def test_one_pass_gives_the_losses_and_gradients_of_two(family):
    model = _double_model(CONFIGS[family])
    inputs, samples = _batch(model)
    joint, joint_grads, joint_passes = _losses_and_grads(
        model, inputs, samples, True)
    apart, apart_grads, apart_passes = _losses_and_grads(
        model, inputs, samples, False)
    assert (joint_passes, apart_passes) == (1, 2)
    # the same keys in the same order (the order of the total's sum)
    assert list(joint) == list(apart)
    assert any('_aux' in key for key in joint)
    for key, value in apart.items():
        torch.testing.assert_close(
            joint[key], value, rtol=1e-10, atol=1e-12, msg=key)
    assert joint_grads.keys() == apart_grads.keys()
    # the positive queries' projections are trained in either mode
    assert any('aux_pos_trans' in name or 'pos_feats_trans' in name
               for name in joint_grads)
    for name, grad in apart_grads.items():
        torch.testing.assert_close(
            joint_grads[name], grad, rtol=1e-8, atol=1e-12, msg=name)


def test_co_dino_without_ground_truth_decodes_in_one_pass():
    """A batch without boxes has no denoising queries: the main block of
    the mask is empty of them and the label embedding stays tied to the
    loss (DDP without ``find_unused_parameters``)."""
    model = _double_model(CONFIGS['co_dino'])
    inputs, samples = _batch(model, num_boxes=(0, 0))
    joint, grads, passes = _losses_and_grads(model, inputs, samples, True)
    apart, _, _ = _losses_and_grads(model, inputs, samples, False)
    assert passes == 1
    for key, value in apart.items():
        torch.testing.assert_close(
            joint[key], value, rtol=1e-10, atol=1e-12, msg=key)
    assert 'query_head.dn_query_generator.label_embedding.weight' in grads


def test_main_mask_is_kept_in_its_block():
    transformer = _double_model(CONFIGS['co_dino']).query_head.transformer
    mask = transformer.block_diagonal_mask([3, 2, 1], torch.device('cpu'))
    expected = torch.ones(6, 6, dtype=torch.bool)
    expected[:3, :3] = expected[3:5, 3:5] = expected[5:, 5:] = False
    assert torch.equal(mask, expected)
    assert transformer.block_diagonal_mask([4], torch.device('cpu')) is None
