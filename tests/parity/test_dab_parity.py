"""Parity with the official DAB-Deformable-DETR code (IDEA-Research/DAB-DETR):
codetr's ``dab_deformable_detr_r50_50e_coco.py`` with the golden run's
ResNet-18 and 2 + 2 layers, weights filled by official parameter name, on
the golden inputs (``one``: image 0; ``two``: both images, the second
padded). See ``tests/data/parity/dab/README.md``.

float64 against the official code run in float64: all six losses (main and
first decoder layer, weighted as the official training loop weights them)
within F64_LOSS_RTOL relative, and the 100 detections per image within
F64_DETECTIONS (paired per class by box; the official boxes clamped to the
image as mmdet's post-processing clamps them). float32 against the official
float32 run: the losses within F32_LOSS_RTOL (no query selection, so no
top-k cut amplifies the CPU's float noise). Bounds: ``parity_data.py``.
"""
import copy

import pytest
import torch
from dab_parity_data import (clamp_to_image, dab_golden, dab_parity_model,
                             weighted_losses)
from parity_data import (F32_LOSS_RTOL, F64_DETECTIONS, F64_LOSS_RTOL, compare,
                         detections_per_class, golden_batch, over, record,
                         relative_differences)

from projects.codetr.checkpoint.dab_detr_names import (from_dab_detr,
                                                       to_dab_detr)

# compares with the golden outputs in float32 and float64
pytestmark = pytest.mark.slow

TAGS = {1: 'one', 2: 'two'}


@pytest.fixture(scope='module')
def parity64():
    return dab_parity_model(torch.float64), dab_golden(torch.float64)


@pytest.fixture(scope='module')
def parity32():
    return dab_parity_model(), dab_golden()


def run(parity, num_images: int, mode: str):
    """Our ``model.loss`` (train mode) or ``model.predict`` (eval,
    ``rescale=False``) on the first ``num_images`` golden inputs, in the
    model's dtype; the model is left in eval mode."""
    model, _ = parity
    dtype = next(model.parameters()).dtype
    inputs, samples = golden_batch(num_images, dtype)
    model.train(mode == 'losses')
    try:
        with torch.no_grad():
            if mode == 'losses':
                return model.loss(inputs, samples), samples
            return model.predict(inputs, samples, rescale=False), samples
    finally:
        model.eval()


def loss_differences(parity, num_images: int) -> dict:
    model, gold = parity
    expected = weighted_losses(gold[TAGS[num_images]]['losses'],
                               gold['weight_dict'])
    losses, _ = run(parity, num_images, 'losses')
    assert set(losses) == set(expected)  # the same six entries
    ours = {key: float(value) for key, value in losses.items()}
    return relative_differences(ours, expected, sorted(expected))


def test_every_official_tensor_is_mapped_once_with_its_shape(parity64):
    """The official model's tensors (the decoder's alias of the box
    branches aside) are exactly codetr's, shape for shape, and the names
    map back."""
    model, gold = parity64
    official = {
        name: shape
        for name, shape in gold['shapes'].items()
        if name not in gold['aliases']
    }
    ours = {}
    for name, tensor in model.state_dict().items():
        if name.endswith('num_batches_tracked'):
            continue  # FrozenBatchNorm2d has no counter
        ours[to_dab_detr(name)] = list(tensor.shape)
        assert from_dab_detr(to_dab_detr(name)) == name
    assert ours == official


def test_the_golden_run_is_seed_independent_and_self_consistent(parity64):
    """What makes every official loss a parity key: no random sampling
    (same losses under two seeds), and float64 agreeing with itself across
    thread counts far below the bounds."""
    _, gold = parity64
    for tag in TAGS.values():
        assert gold[tag]['losses_seed1_equal']
        check = gold['checks']['threads_1_vs_2'][tag]
        assert check['loss_rel'] < 1e-3 * F64_LOSS_RTOL
        assert check['detection_px'] < 1e-3 * F64_DETECTIONS['box']


@pytest.mark.parametrize('num_images', [1, 2])
def test_losses_match_the_official_code_in_float64(parity64, num_images):
    diff = loss_differences(parity64, num_images)
    record(f'DAB-Deformable-DETR, {num_images} image(s), float64', diff)
    far = {k: v for k, v in diff.items() if v > F64_LOSS_RTOL}
    assert not far, f'{len(far)}/{len(diff)} differ (relative): {far}'


@pytest.mark.parametrize('num_images', [1, 2])
def test_detections_match_the_official_code_in_float64(parity64, num_images):
    _, gold = parity64
    results, samples = run(parity64, num_images, 'pred')
    expected = gold[TAGS[num_images]]['pred']
    assert len(results) == len(expected) == num_images
    for image, (result, gold_classes) in enumerate(zip(results, expected)):
        pred = result.pred_instances
        assert pred.bboxes.dtype == torch.float64 and len(pred) == 100
        height, width = samples[image].img_shape
        ours = detections_per_class(pred.bboxes, pred.scores, pred.labels,
                                    len(gold_classes))
        worst = compare(ours, clamp_to_image(gold_classes, height, width))
        assert not over(worst, F64_DETECTIONS), \
            f'image {image}: {worst} (allowed: {F64_DETECTIONS})'


@pytest.mark.parametrize('num_images', [1, 2])
def test_losses_match_the_official_code_in_float32(parity32, num_images):
    diff = loss_differences(parity32, num_images)
    record(f'DAB-Deformable-DETR, {num_images} image(s), float32', diff)
    far = {k: v for k, v in diff.items() if v > F32_LOSS_RTOL}
    assert not far, f'{len(far)}/{len(diff)} differ (relative): {far}'


@pytest.mark.parametrize('mutation', ['sine_order', 'norm_order',
                                      'query_scale'])
def test_model_errors_fail_by_orders_of_magnitude(parity64, mutation):
    """The float64 bound sees the errors a reimplementation could make:
    (x, y) instead of DAB-DETR's (y, x) order in the anchors' sine
    embedding, the decoder layer's norm1/norm2 (after cross- and
    self-attention) taken for each other in the name mapping, and a
    query_scale weight x1.01."""
    model, gold = parity64
    mutant = copy.deepcopy(model)
    decoder = mutant.query_head.transformer.decoder
    with torch.no_grad():
        if mutation == 'sine_order':  # swap the x and y input blocks
            weight = decoder.ref_point_head.layers[0].weight
            x, y = weight[:, :128].clone(), weight[:, 128:256].clone()
            weight[:, :128], weight[:, 128:256] = y, x
        elif mutation == 'norm_order':
            for layer in decoder.layers:
                first, second = layer.norms[0], layer.norms[1]
                for a, b in zip(first.parameters(), second.parameters()):
                    a_value = a.clone()
                    a.copy_(b)
                    b.copy_(a_value)
        else:
            decoder.query_scale.layers[1].weight.mul_(1.01)
    diff = loss_differences((mutant, gold), 2)
    assert max(diff.values()) > 1e3 * F64_LOSS_RTOL, (mutation, diff)
