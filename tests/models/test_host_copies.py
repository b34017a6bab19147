"""Copies from pageable host memory in a training step of each family.

On a GPU a tensor made from host data (``new_tensor``, ``torch.tensor``)
is a copy from pageable memory, which makes the host wait for the queued
work. mmdet's coders, match costs and ``bbox_overlaps`` make one per call;
the configs' parts keep their constants on the device or copy from pinned
memory (docs/performance.md). Counted on the CPU, where the copies are
dispatched alike (``aten::lift_fresh``), by the mmdet or mmcv function
that makes them: only the ones the plugin does not replace remain, so a
part of mmdet's that comes back into the step fails the test.
"""
import collections

import pytest
import torch
from codetr_testing import build_model, make_batch, tiny_model_cfg
from torch.profiler import ProfilerActivity, profile
from zoo_testing import tiny_zoo_model_cfg

from projects.codetr.analysis.host_syncs import source_of

#: Per family, the mmdet/mmcv functions still making tensors from host
#: data, and how many per step of this batch: mmcv's ``batched_nms`` (the
#: RPN's proposals, one per image) and mmdet's denoising mask (0-d fills).
REMAINING = {
    'co_deformable_detr': {'mmcv/ops/nms.py (batched_nms)': 2},
    'co_dino': {
        'mmcv/ops/nms.py (batched_nms)': 2,
        'mmdet/models/layers/transformer/dino_layers.py (generate_dn_mask)':
        7
    },
}
CONFIGS = {
    'co_deformable_detr': None,
    'co_dino': 'configs/co_dino_5scale_r50_1x_coco.py',
}


def library_host_copies(model, inputs, samples) -> collections.Counter:
    """Tensors made from host data by mmdet's and mmcv's code during one
    training step (forward, losses, backward), by function."""
    def step():
        losses = model.loss(inputs, samples)
        model.parse_losses(losses)[0].backward()

    step()  # the plugin's device constants are made once
    with profile(activities=[ProfilerActivity.CPU], with_stack=True) as prof:
        step()
    counts = collections.Counter()
    for event in prof.events():
        if event.name != 'aten::lift_fresh':
            continue
        where = source_of(event)
        if where.startswith(('mmdet/', 'mmcv/')):
            path, _, func = where.partition(':')
            counts[f"{path} {func.split(' ', 1)[1]}"] += 1
    return counts


@pytest.mark.parametrize('family', sorted(CONFIGS))
def test_only_the_unreplaced_copies_remain(family):
    config = CONFIGS[family]
    cfg = tiny_model_cfg() if config is None else tiny_zoo_model_cfg(config)
    model = build_model(cfg).train()
    torch.manual_seed(0)
    inputs, samples = make_batch(model, num_boxes=(3, 2))
    assert library_host_copies(model, inputs, samples) == REMAINING[family]
