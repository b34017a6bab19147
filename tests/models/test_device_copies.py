"""``host_to_device`` gives ``new_tensor``'s result, and on CUDA without
the stream synchronisation that a copy from pageable memory makes
(projects/codetr/models/device_copies.py)."""
import numpy as np
import pytest
import torch

from projects.codetr.analysis.host_syncs import count_cuda_syncs
from projects.codetr.models.device_copies import host_to_device

VALUES = ([[640, 480, 640, 480], [512, 333, 512, 333]], np.arange(6) * 1.5,
          torch.tensor([True, False, True]))


@pytest.mark.parametrize('values', VALUES)
@pytest.mark.parametrize('dtype', (None, torch.float64, torch.long))
def test_equals_new_tensor_on_the_cpu(values, dtype):
    like = torch.zeros(2, dtype=torch.float32)
    out = host_to_device(values, like, dtype=dtype)
    expected = like.new_tensor(values, dtype=dtype)
    assert out.dtype == expected.dtype and out.device == like.device
    assert torch.equal(out, expected)


@pytest.mark.gpu
@pytest.mark.parametrize('values', VALUES)
def test_equals_new_tensor_on_cuda_without_a_sync(values):
    like = torch.zeros(2, device='cuda', dtype=torch.float16)
    # queue work, so that a synchronisation would have something to wait for
    big = torch.randn(2048, 2048, device='cuda')
    for _ in range(20):
        big = big @ big.T / 2048

    results = []
    syncs = count_cuda_syncs(
        lambda: results.append(host_to_device(values, like)))
    assert sum(syncs.values()) == 0, syncs
    expected = like.new_tensor(values)
    assert results[0].device == like.device
    assert torch.equal(results[0], expected)
    # new_tensor itself synchronises: the counter does see such copies
    assert sum(count_cuda_syncs(lambda: like.new_tensor(values)).values()) \
        >= 1


@pytest.mark.gpu
def test_cuda_sync_counter_attributes_reads():
    x = torch.arange(10.0, device='cuda')

    def step():
        x.sum().item()
        (x > 3).nonzero()

    syncs = count_cuda_syncs(step)
    assert sum(syncs.values()) >= 2
