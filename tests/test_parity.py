"""Parity with the released Co-DETR code (Sense-X/Co-DETR, mmdet 2.25).

Same weights (filled by released parameter name), same inputs: every
seed-independent loss of the released code (26 with one image, 14 with two)
within 1e-4 relative, and identical detections. See tests/data/parity/.
"""
import pytest
import torch
from parity_data import (detections_per_class, deterministic_keys,
                         filled_model, golden, golden_batch)

from projects.codetr.checkpoint import from_released, to_released

RTOL = 1e-4


@pytest.fixture(scope='module')
def parity():
    model, names = filled_model()
    return model, names, golden()


def test_every_released_tensor_is_mapped_once_with_its_shape(parity):
    model, names, gold = parity
    released_shapes = gold['shapes']
    assert len(released_shapes) == 294
    state = model.state_dict()
    mapped = sorted(names.values())
    # each codetr tensor maps to a distinct released name ...
    assert len(mapped) == len(set(mapped))
    # ... and together they are exactly the released tensors
    assert set(mapped) == set(released_shapes)
    for ours, released in names.items():
        assert list(state[ours].shape) == released_shapes[released], ours
        assert from_released(released) == ours  # the mapping inverts


def test_unknown_names_are_rejected():
    from projects.codetr.checkpoint import UnmappedKeysError
    for name in ('query_head.transformer.reference_points.weight',
                 'module.backbone.conv1.weight', 'teacher.neck.convs.0'):
        with pytest.raises(UnmappedKeysError):
            to_released(name)
        with pytest.raises(UnmappedKeysError):
            from_released(name)


def run_golden(parity, num_images: int, tag: str, mode: str):
    """Run the model on the golden inputs of ``num_images`` images.

    Args:
        mode: 'losses' (``model.loss`` in training mode, seed 0) or 'pred'
            (``model.predict`` in eval mode, ``rescale=False``).

    Returns:
        tuple: Our output and the released code's
        (``golden()['results'][f'{tag}_{mode}']``); the model is left in eval
        mode.
    """
    model, _, gold = parity
    expected = gold['results'][f'{tag}_{mode}']
    inputs, samples = golden_batch(num_images)
    model.train(mode == 'losses')
    with torch.no_grad():
        if mode == 'losses':
            torch.manual_seed(0)
            ours = model.loss(inputs, samples)
        else:
            ours = model.predict(inputs, samples, rescale=False)
    model.eval()
    return ours, expected


@pytest.mark.parametrize('num_images,tag', [(1, 'one'), (2, 'two')])
def test_losses_match_the_released_code(parity, num_images, tag):
    losses, expected = run_golden(parity, num_images, tag, 'losses')
    keys = deterministic_keys(num_images)
    assert len(keys) == {1: 26, 2: 14}[num_images]
    assert set(expected) == set(losses)  # the same 29 loss entries
    mismatches = {}
    for key in keys:
        ours = sum(
            v.sum()
            for v in losses[key]) if isinstance(losses[key],
                                                (list, tuple)) else losses[key]
        ours = float(ours)
        if abs(ours - expected[key]) > RTOL * abs(expected[key]):
            mismatches[key] = (ours, expected[key])
    assert not mismatches, f'{len(mismatches)}/{len(keys)} differ: ' \
        f'{mismatches}'


@pytest.mark.parametrize('num_images,tag', [(1, 'one'), (2, 'two')])
def test_detections_match_the_released_code(parity, num_images, tag):
    results, expected = run_golden(parity, num_images, tag, 'pred')
    assert len(results) == len(expected) == num_images
    for result, gold_classes in zip(results, expected):
        pred = result.pred_instances
        ours = detections_per_class(pred.bboxes, pred.scores, pred.labels,
                                    len(gold_classes))
        assert [len(c) for c in ours] == [len(c) for c in gold_classes]
        assert sum(len(c) for c in ours) == 100
        for cls, (mine, theirs) in enumerate(zip(ours, gold_classes)):
            if not theirs:
                continue
            theirs = torch.tensor(theirs)
            # boxes in pixels (up to 320), scores in [0, 1]
            torch.testing.assert_close(
                mine[:, :4],
                theirs[:, :4],
                rtol=0,
                atol=1e-3,
                msg=f'boxes of class {cls}')
            torch.testing.assert_close(
                mine[:, 4],
                theirs[:, 4],
                rtol=0,
                atol=1e-5,
                msg=f'scores of class {cls}')
