"""Parity with the released Co-DINO code (Sense-X/Co-DETR, mmdet 2.25).

Same weights (filled by released parameter name, salt ``'#C'``), same
inputs (``one``: image 0; ``three``: three images of different sizes, the
third without boxes). See ``tests/data/parity/README.md``, section
``codino/``.

Exact (losses within 1e-4 relative, boxes within 1e-3 px, scores within
1e-5), on a machine whose float kernels reproduce the golden run (see
below): every seed-independent loss and every detection of the one-image
batch, and with three images every loss and detection that does not pass
through the query selection (encoder, RPN, RoI and ATSS losses; ATSS and
RPN + RoI detections).

Within the released code's own reproducibility: the three-image decoder
losses and query-head detections. The released code does not reproduce
itself there: its image-0 detections differ between the one-image and the
three-image batch by up to 1.1e-4 in score, with a different count in two
classes (``test_released_query_head_depends_on_the_batch``), because the
top-900 query selection has near-ties that float noise of about 1e-6 (CPU
kernels that block differently for another batch size) flips, and a
flipped query moves every other query through self-attention. Ours gives
image 0 the same detections in both batches, equal to the released
one-image ones.

On another CPU than the one that made the golden data the bounds widen to
what this machine's own float noise is: the randomly filled network
amplifies one-ulp differences (another vector width or blocking of the CPU
kernels) about a thousandfold, e.g. up to 7.6e-4 in ``loss_cls`` and
0.06 px in boxes on an AMX Sapphire Rapids core (2026-12-02), where merely
running our own code on 1 thread instead of 2 moves ``loss_cls`` by
3.9e-4. ``float_noise`` measures that move on the machine running the
tests (1 thread against the default), per loss and per evaluation module;
a bound becomes NOISE_FACTOR times the measured noise (MOVED_FACTOR for
the count of swapped detections) where that exceeds the exact bound, and
never more than the released code's own reproducibility (DECODER_RTOL,
BATCH_NOISE). A loss or module that reproduces itself across thread counts
(there: the RPN, RoI, ATSS and encoder losses, the ATSS and RPN + RoI
detections) keeps its exact bound.
"""
import functools
from typing import Callable, Dict, List

import pytest
import torch
from codino_parity_data import filled_model, golden, golden_batch
from parity_data import detections_per_class
from scipy.optimize import linear_sum_assignment

from projects.codetr.checkpoint import from_released

RTOL = 1e-4
TAGS = ('one', 'three')
# Three-image losses that depend on which 900 queries the encoder selects;
# largest difference seen: 1.0e-3 (d0.loss_cls).
DECODER_LOSSES = [
    f'{prefix}loss_{name}' for prefix in ('', 'd0.')
    for name in ('cls', 'bbox', 'iou')
]
DECODER_RTOL = 2e-3
# Three-image query-head detections (soft-NMS, 300 per image) against the
# released ones; seen: 0.058 px, 3.3e-4 in score, 4 detections moved to
# another class. The released code's own image 0 moves 0.04 px / 1.1e-4.
BATCH_NOISE = dict(box=0.2, score=1e-3, moved=8)
# a bound widened by this machine's float noise: this many times the noise
NOISE_FACTOR = 4
# detections that another one replaced at the top-k cut: twice as many as
# the two thread counts swap
MOVED_FACTOR = 2
# paired detections further apart than this are different detections (a
# near-tied score let another one into the top-k): counted as moved
SWAP_PX = 1.0
# detections per image the released test configs keep
DETECTIONS_PER_IMAGE = {'detr': 300, 'one-stage': 100, 'two-stage': 100}


@pytest.fixture(scope='module')
def parity():
    model, names = filled_model()
    return model, names, golden()


def total(loss) -> float:
    """A loss entry summed over its list, as the golden run reported it."""
    if isinstance(loss, (list, tuple)):
        return float(sum(v.sum() for v in loss))
    return float(loss)


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


def once_per_thread_count(fn: Callable) -> Callable:
    """Run ``fn(parity, ...)`` once per model, arguments and thread count:
    the tests and ``float_noise`` ask for the same forward passes, which are
    deterministic for a given thread count (results are shared: read-only).
    """
    results = {}

    @functools.wraps(fn)
    def wrapper(parity, *args, **kwargs):
        key = (id(parity[0]), args, tuple(sorted(kwargs.items())),
               torch.get_num_threads())
        if key not in results:
            results[key] = fn(parity, *args, **kwargs)
        return results[key]

    return wrapper


@once_per_thread_count
def losses_of(parity, tag: str, seed: int) -> Dict[str, float]:
    model, _, _ = parity
    inputs, samples = golden_batch(tag)
    model.train()
    try:
        with torch.no_grad():
            torch.manual_seed(seed)
            losses = model.loss(inputs, samples)
    finally:
        model.eval()
    return {key: total(value) for key, value in losses.items()}


@pytest.mark.parametrize('tag', TAGS)
def test_losses_match_the_released_code(parity, float_noise, tag):
    gold = parity[2][tag]
    ours = losses_of(parity, tag, seed=0)
    assert set(ours) == set(gold['losses'])  # the same 35 loss entries
    keys = gold['deterministic']
    assert len(keys) == {'one': 27, 'three': 15}[tag]

    noise = float_noise['losses'][tag]

    def rtol(key: str) -> float:
        exact = DECODER_RTOL if tag == 'three' and key in DECODER_LOSSES \
            else RTOL
        # each loss widened by its own noise only: the RPN, RoI, ATSS and
        # encoder losses hardly move (<= 2e-6) and stay at RTOL
        return max(exact, min(DECODER_RTOL, NOISE_FACTOR * noise[key]))

    mismatches = {
        key: (ours[key], gold['losses'][key])
        for key in keys
        if abs(ours[key] - gold['losses'][key]) >
        rtol(key) * abs(gold['losses'][key])
    }
    assert not mismatches, \
        f'{len(mismatches)}/{len(keys)} differ (ours, released): {mismatches}'


def test_seed_dependent_losses_stay_in_the_released_range(parity):
    """The denoising, RPN and RoI classification losses depend on random
    noise and sampling: ours, under seed 0, lies no further from the
    released seed-0 value than the released seeds lie from each other (with
    a margin of 3x), so a broken term still shows."""
    gold = parity[2]['three']
    ours = losses_of(parity, 'three', seed=0)
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


@once_per_thread_count
def predictions(parity, tag: str, eval_module: str) -> List:
    """Our detections of the golden inputs of ``tag`` with ``rescale=False``,
    per image a list of 80 (n, 5) [x1, y1, x2, y2, score] tensors."""
    model, _, _ = parity
    inputs, samples = golden_batch(tag)
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
    return [
        detections_per_class(r.pred_instances.bboxes, r.pred_instances.scores,
                             r.pred_instances.labels, 80) for r in results
    ]


def compare(ours: List[torch.Tensor], theirs: List[list]) -> Dict:
    """Per class, pair our detections with the released ones (minimal
    largest coordinate difference; the order of near-tied scores is not
    compared) and report the worst pair and the detections not paired.

    Args:
        ours (list[Tensor]): Per class (n, 5) [x1, y1, x2, y2, score].
        theirs (list[list]): Per class the released flat [x1, ..., score]
            values (or tensors, e.g. a second run of ours).

    Returns:
        dict: ``box`` (px) and ``score``: largest absolute differences of
        paired detections; ``moved``: detections in a class that has more
        of them on one side than on the other, and pairs more than SWAP_PX
        apart (another detection took the place).
    """
    worst = dict(box=0.0, score=0.0, moved=0)
    for mine, gold in zip(ours, theirs):
        gold = torch.as_tensor(gold).reshape(-1, 5)
        worst['moved'] += abs(len(mine) - len(gold))
        if not len(mine) or not len(gold):
            continue
        cost = (mine[:, None, :4] - gold[None, :, :4]).abs().amax(-1)
        rows, cols = linear_sum_assignment(cost.numpy())
        errors = cost[rows, cols]
        same = errors <= SWAP_PX
        worst['moved'] += int((~same).sum())
        if not same.any():
            continue
        rows, cols = rows[same.numpy()], cols[same.numpy()]
        worst['box'] = max(worst['box'], float(errors[same].max()))
        worst['score'] = max(
            worst['score'],
            float((mine[rows, 4] - gold[cols, 4]).abs().max()))
    return worst


EXACT = dict(box=1e-3, score=1e-5, moved=0)


@pytest.fixture(scope='module')
def float_noise(parity) -> Dict:
    """How far our own results move on this machine when only the blocking
    of the CPU kernels changes: 1 thread against the default (2 where the
    default is 1).

    Returns:
        dict: ``losses``: tag -> {key: relative change} of the
        deterministic losses; ``detections``: (tag, eval_module) ->
        :func:`compare` of the two runs, worst over the images.
    """
    gold = parity[2]

    def run() -> Dict:
        return {
            tag: (losses_of(parity, tag, seed=0), {
                module: predictions(parity, tag, module)
                for module in DETECTIONS_PER_IMAGE
            })
            for tag in TAGS
        }

    threads = torch.get_num_threads()
    default = run()
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        other = run()
    finally:
        torch.set_num_threads(threads)
    noise = dict(losses={}, detections={})
    for tag in TAGS:
        a, b = default[tag][0], other[tag][0]
        noise['losses'][tag] = {
            k: abs(a[k] - b[k]) / max(abs(a[k]), 1e-12)
            for k in gold[tag]['deterministic']
        }
        for module in DETECTIONS_PER_IMAGE:
            worst = dict(box=0.0, score=0.0, moved=0)
            for mine, again in zip(default[tag][1][module],
                                   other[tag][1][module]):
                for key, value in compare(mine, again).items():
                    worst[key] = max(worst[key], value)
            noise['detections'][tag, module] = worst
    return noise


def widened(bound: Dict, noise: Dict) -> Dict:
    """``bound`` widened to NOISE_FACTOR x this machine's ``noise`` where
    that is larger (moved detections: MOVED_FACTOR x, a count), at most to
    the released code's own BATCH_NOISE."""
    factor = dict(box=NOISE_FACTOR, score=NOISE_FACTOR, moved=MOVED_FACTOR)
    return {
        key: max(bound[key], min(BATCH_NOISE[key], factor[key] * noise[key]))
        for key in bound
    }


@pytest.mark.parametrize('eval_module', list(DETECTIONS_PER_IMAGE))
@pytest.mark.parametrize('tag', TAGS)
def test_detections_match_the_released_code(parity, float_noise, tag,
                                            eval_module):
    expected = parity[2][tag]['pred'][eval_module]
    ours = predictions(parity, tag, eval_module)
    assert len(ours) == len(expected)
    bound = BATCH_NOISE if (tag, eval_module) == ('three', 'detr') else EXACT
    bound = widened(bound, float_noise['detections'][tag, eval_module])
    for image, (mine, theirs) in enumerate(zip(ours, expected)):
        worst = compare(mine, theirs)
        over = {k: v for k, v in worst.items() if v > bound[k]}
        assert not over, f'image {image}: {worst} (allowed: {bound})'


def test_query_head_detections_do_not_depend_on_the_batch(parity,
                                                          float_noise):
    """Image 0 alone and in the three-image batch: the same detections,
    equal to the released one-image ones within the one-image bounds (the
    reference for the three-image query head; exact where this machine's
    float noise allows)."""
    alone = predictions(parity, 'one', 'detr')[0]
    batched = predictions(parity, 'three', 'detr')[0]
    for mine, other in zip(alone, batched):
        assert len(mine) == len(other)
        torch.testing.assert_close(mine[:, :4], other[:, :4], rtol=0,
                                   atol=EXACT['box'])
        torch.testing.assert_close(mine[:, 4], other[:, 4], rtol=0,
                                   atol=EXACT['score'])
    worst = compare(batched, parity[2]['one']['pred']['detr'][0])
    bound = widened(EXACT, float_noise['detections']['one', 'detr'])
    assert all(worst[k] <= bound[k] for k in bound), (worst, bound)


def test_released_query_head_depends_on_the_batch(parity):
    """The fact behind BATCH_NOISE, read off the golden data: the released
    code's image 0 differs between its one- and three-image runs."""
    gold = parity[2]
    batched = [
        torch.tensor(c).reshape(-1, 5)
        for c in gold['three']['pred']['detr'][0]
    ]
    worst = compare(batched, gold['one']['pred']['detr'][0])
    assert worst['moved'] > 0 and worst['score'] > EXACT['score'], worst
    assert all(worst[k] <= BATCH_NOISE[k] for k in BATCH_NOISE), worst
