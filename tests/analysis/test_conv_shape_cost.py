"""The new-input-size measurement: sizes whose feature-map grids differ,
each run twice, the fixed size last, medians of what was timed, and the
convolutions counted."""
import subprocess
import sys

import pytest
import torch
from codetr_testing import REPO_ROOT, build_model, tiny_model_cfg
from torch import nn

from projects.codetr.analysis import conv_shape_cost
from projects.codetr.analysis.conv_shape_cost import (count_convolutions,
                                                      cudnn_api,
                                                      distinct_sizes, grid,
                                                      measure)


def test_grid_rounds_up_like_strided_convolutions():
    assert grid((800, 1216)) == (25, 38)
    assert grid((801, 1216)) == (26, 38)
    assert grid((64, 65), stride=16) == (4, 5)


def test_sizes_have_distinct_grids_are_seeded_and_in_range():
    sizes = distinct_sizes(50, seed=3, exclude=[(800, 1216)])
    assert len({grid(s) for s in sizes}) == 50
    assert grid((800, 1216)) not in {grid(s) for s in sizes}
    assert all(480 <= h <= 800 and h <= w <= 1333 for h, w in sizes)
    assert distinct_sizes(50, seed=3, exclude=[(800, 1216)]) == sizes
    assert distinct_sizes(50, seed=4) != sizes
    # heights 33-64 and widths up to 100: grids (2, 2), (2, 3), (2, 4)
    small = distinct_sizes(3, short_side=(33, 64), max_long_side=100)
    assert sorted(grid(s) for s in small) == [(2, 2), (2, 3), (2, 4)]
    with pytest.raises(ValueError, match='only 2 distinct grids'):
        distinct_sizes(3, short_side=(33, 64), max_long_side=100,
                       exclude=[(40, 40)])


def test_each_size_runs_twice_then_the_fixed_size(monkeypatch):
    model = build_model(tiny_model_cfg())
    seen = []
    model.backbone.register_forward_pre_hook(
        lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    # 4 warm-up passes, then first/again per size, then 3 steady passes
    times = iter([0.0] * 4 + [50.0, 10.0, 70.0, 20.0, 40.0, 30.0] +
                 [5.0, 9.0, 7.0])

    def fake_timer(device):

        def timed(fn):
            fn()
            return next(times)

        return timed

    monkeypatch.setattr(conv_shape_cost, '_timer', fake_timer)
    sizes = [(64, 96), (96, 64), (128, 128)]
    result = measure(model, sizes, [32, 32], batch_size=1, steady_repeats=3)
    # allocator warm-up (larger than all), fixed-size warm-up, the count
    assert seen[:5] == [(160, 160)] * 2 + [(32, 32)] * 3
    assert seen[5:11] == [s for s in sizes for _ in range(2)]
    assert seen[11:] == [(32, 32)] * 3
    assert result['first_ms'] == [50.0, 70.0, 40.0]
    assert result['again_ms'] == [10.0, 20.0, 30.0]
    assert result['new_size_ms'] == 40.0  # median of 40, 50, 10
    assert result['steady_ms'] == 7.0
    assert result['sizes'] == sizes
    assert result['api'] == cudnn_api('cpu') == 'no cuDNN (CPU)'
    assert all(p.grad is None for p in model.parameters())


def test_convolutions_are_counted_once_per_call():
    model = build_model(tiny_model_cfg())
    convs = [
        m for part in (model.backbone, model.neck) for m in part.modules()
        if isinstance(m, nn.modules.conv._ConvNd)
    ]
    count = count_convolutions(
        model, lambda: model.extract_feat(torch.zeros(1, 3, 64, 64)))
    assert count == len(convs) > 0
    assert count_convolutions(model, lambda: None) == 0  # hooks removed


def test_sizes_sharing_a_grid_are_refused():
    model = build_model(tiny_model_cfg())
    with pytest.raises(ValueError, match=r'\(64, 64\) and \(60, 50\) share'):
        measure(model, [(64, 64), (60, 50)], (128, 128))
    with pytest.raises(ValueError, match='steady_size=.96, 96.'):
        measure(model, [(64, 64), (90, 70)], (96, 96))


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


@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine '
                    'without CUDA')
def test_command_line_names_the_missing_gpu():
    proc = subprocess.run(
        [sys.executable, 'tools/analysis/conv_shape_cost.py', 'k2'],
        cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert 'no CUDA device: pass --device cpu' in proc.stderr
