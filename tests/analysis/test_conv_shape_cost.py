"""The new-input-size measurement: distinct sizes, each run twice, the
fixed size last, and the convolutions counted."""
import subprocess
import sys

import pytest
import torch
from codetr_testing import REPO_ROOT, build_model, tiny_model_cfg

from projects.codetr.analysis.conv_shape_cost import (count_convolutions,
                                                      cudnn_api,
                                                      distinct_sizes, measure)


def test_sizes_are_distinct_seeded_and_in_range():
    sizes = distinct_sizes(50, seed=3)
    assert len(set(sizes)) == 50
    assert all(480 <= h <= 800 and h <= w <= 1333 for h, w in sizes)
    assert distinct_sizes(50, seed=3) == sizes
    assert distinct_sizes(50, seed=4) != sizes
    assert sorted(distinct_sizes(3, short_side=(10, 10),
                                 max_long_side=12)) == [(10, 10), (10, 11),
                                                        (10, 12)]
    with pytest.raises(ValueError, match='give only 3'):
        distinct_sizes(4, short_side=(10, 10), max_long_side=12)


def test_each_size_runs_twice_then_the_fixed_size():
    model = build_model(tiny_model_cfg())
    seen = []
    model.backbone.register_forward_pre_hook(
        lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    sizes = [(64, 96), (96, 64), (80, 80)]
    result = measure(model, sizes, (64, 64), batch_size=1, steady_repeats=3)
    # allocator warm-up (larger than all), fixed-size warm-up, the count
    assert seen[:5] == [(128, 128)] * 2 + [(64, 64)] * 3
    assert seen[5:11] == [s for s in sizes for _ in range(2)]
    assert seen[11:] == [(64, 64)] * 3
    assert len(result['first_ms']) == len(result['again_ms']) == 3
    assert all(t > 0 for t in result['first_ms'] + result['again_ms'])
    assert result['steady_ms'] > 0 and result['sizes'] == sizes
    assert result['api'] == cudnn_api('cpu') == 'no cuDNN (CPU)'
    # parameters of the model got gradients, then were cleared
    assert all(p.grad is None for p in model.parameters())


def test_convolutions_are_counted_per_forward():
    model = build_model(tiny_model_cfg())
    convs = [m for m in model.backbone.modules()
             if type(m).__name__.endswith('Conv2d')]
    count = count_convolutions(
        model, lambda: model.extract_feat(torch.zeros(1, 3, 64, 64)))
    assert count >= len(convs) > 0
    # the hooks are gone afterwards
    assert count_convolutions(model, lambda: None) == 0


def test_repeated_or_fixed_sizes_are_refused():
    model = build_model(tiny_model_cfg())
    with pytest.raises(ValueError, match='distinct'):
        measure(model, [(64, 64), (64, 64)], (80, 80))
    with pytest.raises(ValueError, match='distinct'):
        measure(model, [(64, 64)], (64, 64))


def test_cudnn_api_names_the_binding(monkeypatch):
    monkeypatch.delenv('TORCH_CUDNN_V8_API_DISABLED', raising=False)
    assert cudnn_api('cuda:0') == 'cuDNN v8 API (default)'
    monkeypatch.setenv('TORCH_CUDNN_V8_API_DISABLED', '1')
    assert cudnn_api('cuda') == \
        'cuDNN v7 API (TORCH_CUDNN_V8_API_DISABLED=1)'


def test_command_line_refuses_no_sizes():
    proc = subprocess.run(
        [sys.executable, 'tools/analysis/conv_shape_cost.py', 'k2',
         '--sizes', '0'], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert '--sizes and --batch-size must be at least 1' in proc.stderr
