"""Parity with the released Co-DINO code (Sense-X/Co-DETR, mmdet 2.25).

Same weights (filled by released parameter name, salt ``'#C'``), same
inputs (``one``: image 0; ``three``: three images of different sizes, the
third without boxes). See ``tests/data/parity/README.md``, section
``codino/``.

float64, against the released code run in float64 (bounds in
``parity_data.py``): every seed-independent loss (27 with one image, 15
with three; the query head's too) within F64_LOSS_RTOL relative, and the
detections of every evaluation module (``detr`` with the released soft-NMS,
``one-stage``: ATSS, ``two-stage``: RPN + RoI head) within F64_DETECTIONS,
paired per class by box (the order of tied scores is not compared). Seen
with AVX512 and AVX2 kernels on 1 and 2 threads: up to 4.8e-15 relative
(``loss_bbox0``), 2.8e-12 px, 1.4e-15 in score.

Why float64: in float32 the top-900 query selection has near-ties that
one-ulp differences between CPU kernels (vector width, thread count) flip,
and a flipped query moves every other query through self-attention: up to
~1e-3 in the decoder losses and detections swapped at the top-300 cut,
between machines and even between the released code's own one- and
three-image runs (``test_released_query_head_depends_on_the_batch``). In
float64 the released code reproduces itself across thread counts, and so
does the image-0 query head across batch sizes.

float32, against the released code run in float32, only for the branches
that do not pass through the query selection: the encoder, RPN, RoI, ATSS
and positive-query losses within F32_LOSS_RTOL, and the ATSS and RPN + RoI
detections within F32_DETECTIONS. They also show that running in float64
changed nothing in float32.
"""
from typing import Dict, List

import pytest
import torch
from codino_parity_data import filled_model, golden, golden_batch
from parity_data import (F32_DETECTIONS, F32_LOSS_RTOL, F64_DETECTIONS,
                         F64_LOSS_RTOL, QUERY_HEAD_LOSSES, compare,
                         detections_per_class, model_dtype, over, record,
                         relative_differences, total)

from projects.codetr.checkpoint import from_released

# compares with the golden outputs in float32 and float64
pytestmark = pytest.mark.slow

TAGS = ('one', 'three')
# The query head's losses (kept under this name for tests/gpu).
DECODER_LOSSES = QUERY_HEAD_LOSSES
# The released code's own reproducibility in float32: its image-0 query-head
# detections alone and in the three-image batch differ by 0.04 px, 1.1e-4 in
# score and two detections (read off the float32 golden data below).
BATCH_NOISE = dict(box=0.2, score=1e-3, moved=8)
# detections per image the released test configs keep
DETECTIONS_PER_IMAGE = {'detr': 300, 'one-stage': 100, 'two-stage': 100}
AUX_MODULES = ('one-stage', 'two-stage')


@pytest.fixture(scope='module')
def parity():
    """The float32 model and the released float32 outputs."""
    model, names = filled_model()
    return model, names, golden()


@pytest.fixture(scope='module')
def parity64():
    """The float64 model and the released float64 outputs."""
    model, names = filled_model(torch.float64)
    return model, names, golden(torch.float64)


def test_every_released_tensor_is_mapped_once_with_its_shape(parity):
    model, names, gold = parity
    released_shapes = gold['shapes']
    assert len(released_shapes) == 292
    state = model.state_dict()
    mapped = sorted(names.values())
    assert len(mapped) == len(set(mapped))  # one released name each ...
    assert set(mapped) == set(released_shapes)  # ... and all of them
    for ours, released in names.items():
        assert list(state[ours].shape) == released_shapes[released], ours
        assert from_released(released) == ours  # the mapping inverts


_RUNS: Dict = {}


def once(kind: str, parity, *args):
    """``losses_of`` / ``predictions`` results, computed once per model and
    arguments (the forward passes are deterministic; results are shared,
    read-only)."""
    key = (kind, id(parity[0]), args)
    model, result = _RUNS.get(key, (None, None))
    if model is not parity[0]:  # not computed, or for a model now gone
        run = {'losses': _losses, 'pred': _predictions}[kind]
        result = run(parity, *args)
        _RUNS[key] = (parity[0], result)
    return result


def losses_of(parity, tag: str, seed: int) -> Dict[str, float]:
    """Our losses of the golden inputs of ``tag`` after
    ``torch.manual_seed(seed)``, each summed over its list, in the model's
    dtype."""
    return once('losses', parity, tag, seed)


def _losses(parity, tag: str, seed: int) -> Dict[str, float]:
    model, _, _ = parity
    inputs, samples = golden_batch(tag, model_dtype(model))
    model.train()
    try:
        with torch.no_grad():
            torch.manual_seed(seed)
            losses = model.loss(inputs, samples)
    finally:
        model.eval()
    return {key: total(value) for key, value in losses.items()}


def predictions(parity, tag: str, eval_module: str) -> List:
    """Our detections of the golden inputs of ``tag`` with ``rescale=False``,
    per image a list of 80 (n, 5) [x1, y1, x2, y2, score] tensors."""
    return once('pred', parity, tag, eval_module)


def _predictions(parity, tag: str, eval_module: str) -> List:
    model, _, _ = parity
    inputs, samples = golden_batch(tag, model_dtype(model))
    model.eval()
    previous = model.eval_module
    model.eval_module = eval_module
    try:
        with torch.no_grad():
            results = model.predict(inputs, samples, rescale=False)
    finally:
        model.eval_module = previous
    assert all(
        len(r.pred_instances) == DETECTIONS_PER_IMAGE[eval_module]
        for r in results)
    assert all(r.pred_instances.scores.dtype == model_dtype(model)
               for r in results)
    return [
        detections_per_class(r.pred_instances.bboxes, r.pred_instances.scores,
                             r.pred_instances.labels, 80) for r in results
    ]


@pytest.mark.parametrize('tag', TAGS)
def test_losses_match_the_released_code_in_float64(parity64, tag):
    gold = parity64[2][tag]
    ours = losses_of(parity64, tag, seed=0)
    assert set(ours) == set(gold['losses'])  # the same 35 loss entries
    keys = gold['deterministic']
    assert len(keys) == {'one': 27, 'three': 15}[tag]
    assert set(QUERY_HEAD_LOSSES) <= set(keys)
    diff = relative_differences(ours, gold['losses'], keys)
    record(f'Co-DINO, {tag}, float64', diff)
    far = {k: v for k, v in diff.items() if v > F64_LOSS_RTOL}
    assert not far, f'{len(far)}/{len(keys)} differ (relative): {far}'


def test_seed_dependent_losses_stay_in_the_released_range(parity64):
    """The denoising, RPN and RoI classification losses depend on random
    noise and sampling (ours draws other numbers than the released code):
    ours, under seed 0, lies no further from the released seed-0 value than
    the released seeds lie from each other (with a margin of 3x), so a
    broken term still shows."""
    gold = parity64[2]['three']
    ours = losses_of(parity64, 'three', seed=0)
    random_keys = [k for k in gold['losses'] if k not in gold['deterministic']]
    assert 'dn_loss_bbox' in random_keys
    far = {}
    for key in random_keys:
        spread = abs(gold['losses'][key] - gold['losses_seed1'][key])
        bound = 3 * spread + 0.05 * abs(gold['losses'][key])
        if abs(ours[key] - gold['losses'][key]) > bound:
            far[key] = (ours[key], gold['losses'][key],
                        gold['losses_seed1'][key])
    assert not far, f'(ours, released seed 0, seed 1): {far}'


@pytest.mark.parametrize('eval_module', list(DETECTIONS_PER_IMAGE))
@pytest.mark.parametrize('tag', TAGS)
def test_detections_match_the_released_code_in_float64(parity64, tag,
                                                       eval_module):
    expected = parity64[2][tag]['pred'][eval_module]
    ours = predictions(parity64, tag, eval_module)
    assert len(ours) == len(expected)
    for image, (mine, theirs) in enumerate(zip(ours, expected)):
        worst = compare(mine, theirs)
        assert not over(worst, F64_DETECTIONS), \
            f'image {image}: {worst} (allowed: {F64_DETECTIONS})'


def test_query_head_detections_do_not_depend_on_the_batch(parity64):
    """Image 0 alone and in the three-image batch: the same ``detr``
    detections (float64), as the released code's (whose float32 runs
    differ, ``test_released_query_head_depends_on_the_batch``)."""
    alone = predictions(parity64, 'one', 'detr')[0]
    batched = predictions(parity64, 'three', 'detr')[0]
    worst = compare(batched, alone)
    assert not over(worst, F64_DETECTIONS), worst
    gold = parity64[2]
    released = compare([
        torch.tensor(c, dtype=torch.float64).reshape(-1, 5)
        for c in gold['three']['pred']['detr'][0]
    ], gold['one']['pred']['detr'][0])
    assert not over(released, F64_DETECTIONS), released


def test_released_query_head_depends_on_the_batch(parity):
    """The fact behind BATCH_NOISE, read off the float32 golden data: the
    released code's image 0 differs between its one- and three-image
    runs."""
    gold = parity[2]
    batched = [
        torch.tensor(c).reshape(-1, 5)
        for c in gold['three']['pred']['detr'][0]
    ]
    worst = compare(batched, gold['one']['pred']['detr'][0])
    assert worst['moved'] > 0 and worst['score'] > F32_DETECTIONS['score'], \
        worst
    assert not over(worst, BATCH_NOISE), worst


@pytest.mark.parametrize('tag', TAGS)
def test_auxiliary_losses_match_the_released_code_in_float32(parity, tag):
    """The seed-independent losses outside the query selection, float32:
    encoder, RPN, RoI, ATSS (and, with one image, positive-query) losses."""
    gold = parity[2][tag]
    keys = [k for k in gold['deterministic'] if k not in QUERY_HEAD_LOSSES]
    assert len(keys) == {'one': 21, 'three': 9}[tag]
    diff = relative_differences(
        losses_of(parity, tag, seed=0), gold['losses'], keys)
    record(f'Co-DINO, {tag}, float32, auxiliary', diff)
    far = {k: v for k, v in diff.items() if v > F32_LOSS_RTOL}
    assert not far, f'{len(far)}/{len(keys)} differ (relative): {far}'


@pytest.mark.parametrize('eval_module', AUX_MODULES)
@pytest.mark.parametrize('tag', TAGS)
def test_auxiliary_detections_match_the_released_code_in_float32(
        parity, tag, eval_module):
    """ATSS and RPN + RoI detections, float32 (no query selection)."""
    expected = parity[2][tag]['pred'][eval_module]
    ours = predictions(parity, tag, eval_module)
    for image, (mine, theirs) in enumerate(zip(ours, expected)):
        worst = compare(mine, theirs)
        assert not over(worst, F32_DETECTIONS), \
            f'image {image}: {worst} (allowed: {F32_DETECTIONS})'
