"""One decoder pass for the main and the positive queries
(``joint_decoding=True``, the default) gives the losses and gradients of two
passes, main queries first and the positive queries after them, as the
released code decodes them (``joint_decoding=False``).

In float64 the two differ by the order of floating-point sums only.
"""
import pytest
import torch
from codetr_testing import build_model, tiny_model_cfg
from zoo_testing import FAMILY_CONFIGS, double_batch, double_family_model


def _losses_and_grads(model, inputs, samples, joint, masks=None):
    """Losses, their gradients, and the number of decoder passes (the
    self-attention masks reaching the decoder appended to ``masks``)."""
    model.query_head.joint_decoding = joint
    passes = []

    def record(module, args, kwargs):
        passes.append(1)
        if masks is not None:
            masks.append(kwargs.get('self_attn_mask'))

    hook = model.query_head.transformer.decoder.register_forward_pre_hook(
        record, with_kwargs=True)
    try:
        model.zero_grad()
        torch.manual_seed(0)  # the same random samples in both runs
        losses = model.loss(inputs, samples)
    finally:
        hook.remove()
    losses['rng_state'] = torch.get_rng_state().double()
    total = sum(v for k, v in losses.items()
                if 'loss' in k and k != 'rng_state')
    total.backward()
    grads = {
        name: p.grad.clone()
        for name, p in model.named_parameters() if p.grad is not None
    }
    return losses, grads, len(passes)


@pytest.mark.parametrize('family', sorted(FAMILY_CONFIGS))
def test_one_pass_gives_the_losses_and_gradients_of_two(family):
    model = double_family_model(family)
    inputs, samples = double_batch(model)
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


@pytest.mark.parametrize('num_boxes', [(0, 0), (3, 0)])
def test_co_dino_with_images_without_ground_truth(num_boxes):
    """A batch without boxes has no denoising queries, and the label
    embedding stays tied to the loss (DDP without
    ``find_unused_parameters``); one image without boxes pads its
    denoising groups."""
    model = double_family_model('co_dino')
    inputs, samples = double_batch(model, num_boxes=num_boxes)
    joint, grads, passes = _losses_and_grads(model, inputs, samples, True)
    apart, _, _ = _losses_and_grads(model, inputs, samples, False)
    assert passes == 1
    assert list(joint) == list(apart)
    for key, value in apart.items():
        torch.testing.assert_close(
            joint[key], value, rtol=1e-10, atol=1e-12, msg=key)
    assert 'query_head.dn_query_generator.label_embedding.weight' in grads


def test_the_joint_mask_keeps_the_denoising_mask_and_the_blocks():
    """The mask the decoder receives: DINO's denoising mask in the main
    block, each positive-query set in a block of its own, every other
    pair blocked."""
    model = double_family_model('co_dino')
    inputs, samples = double_batch(model)
    joint_masks, apart_masks = [], []
    _losses_and_grads(model, inputs, samples, True, joint_masks)
    _losses_and_grads(model, inputs, samples, False, apart_masks)
    (joint, ), (main, aux) = joint_masks, apart_masks
    num_main, num_aux = main.size(0), aux.size(0)
    assert joint.shape == (num_main + num_aux, ) * 2
    assert torch.equal(joint[:num_main, :num_main], main)
    assert torch.equal(joint[num_main:, num_main:], aux)
    assert joint[:num_main, num_main:].all()
    assert joint[num_main:, :num_main].all()
    assert main.any() and aux.any()  # denoising groups; two sets


def test_without_positive_queries_one_pass_either_way():
    """K = 0 and ``with_pos_coord=False`` decode the main queries alone."""
    for cfg in (_k0_cfg(), _nopos_cfg()):
        model = build_model(cfg).double().train()
        inputs, samples = double_batch(model)
        for joint in (True, False):
            losses, _, passes = _losses_and_grads(model, inputs, samples,
                                                  joint)
            assert passes == 1
            assert not any('_aux' in key for key in losses)


def _k0_cfg():
    cfg = tiny_model_cfg()
    cfg.rpn_head = cfg.roi_head = cfg.bbox_head = None
    return cfg


def _nopos_cfg():
    cfg = tiny_model_cfg()
    cfg.with_pos_coord = False
    return cfg


def test_different_decoder_inputs_are_refused():
    model = double_family_model('co_deformable_detr')
    transformer = model.query_head.transformer
    coords = torch.rand(1, 3, 4, dtype=torch.float64) * 0.5 + 0.25
    feats = torch.rand(1, 3, 256, dtype=torch.float64)
    main = dict(query=feats, reference_points=coords)  # no query_pos
    with pytest.raises(ValueError, match='joint_decoding=False'):
        transformer.forward_with_aux(main, [coords], [feats], *[None] * 6)
    with pytest.raises(ValueError, match='at least one'):
        transformer.forward_with_aux(main, [], [], *[None] * 6)


def test_main_mask_is_kept_in_its_block():
    transformer = double_family_model('co_dino').query_head.transformer
    mask = transformer.block_diagonal_mask([3, 2, 1], torch.device('cpu'))
    expected = torch.ones(6, 6, dtype=torch.bool)
    expected[:3, :3] = expected[3:5, 3:5] = expected[5:, 5:] = False
    assert torch.equal(mask, expected)
    assert transformer.block_diagonal_mask([4], torch.device('cpu')) is None
