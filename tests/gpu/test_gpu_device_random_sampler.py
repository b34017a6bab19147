"""``DeviceRandomSampler`` on a CUDA gallery: the CPU generator is not
used, and CUDA's generator advances by the same amount whatever the
gallery's size (docs/testing.md, the resume test's random states)."""
import pytest
import torch
from mmdet.models.task_modules import RandomSampler

from projects.codetr.models.task_modules import DeviceRandomSampler

pytestmark = pytest.mark.gpu


def sampler(cls=DeviceRandomSampler):
    return cls(num=512, pos_fraction=0.25, add_gt_as_proposals=True)


def states_after(cls, size: int, num: int = 50):
    """The CPU and CUDA generator states after one draw from ``size``
    candidates on the GPU, both generators seeded alike before."""
    torch.manual_seed(0)  # seeds CUDA's generator too
    gallery = torch.arange(size, device='cuda')
    out = sampler(cls).random_choice(gallery, num)
    assert out.device == gallery.device and out.dtype == gallery.dtype
    assert len(set(out.tolist())) == num
    return torch.get_rng_state(), torch.cuda.get_rng_state()


def test_cuda_draws_leave_the_cpu_generator_and_not_depend_on_size():
    torch.manual_seed(0)
    cpu0, cuda0 = torch.get_rng_state(), torch.cuda.get_rng_state()
    cpu_a, cuda_a = states_after(DeviceRandomSampler, 100)
    cpu_b, cuda_b = states_after(DeviceRandomSampler, 3000)
    assert torch.equal(cpu_a, cpu0) and torch.equal(cpu_b, cpu0)
    assert not torch.equal(cuda_a, cuda0)  # it drew from CUDA's
    assert torch.equal(cuda_a, cuda_b)
    # mmdet's randperm on the CPU, for contrast: the state depends on n
    cpu_a, _ = states_after(RandomSampler, 100)
    cpu_b, _ = states_after(RandomSampler, 3000)
    assert not torch.equal(cpu_a, cpu_b)


def test_cuda_state_after_sampling_does_not_depend_on_the_counts():
    """Positives below the wanted number (mmdet would not draw) and above
    it: the CUDA generator ends in the same state."""
    from mmdet.models.task_modules import AssignResult
    from mmengine.structures import InstanceData

    def state_after(num_pos):
        gt_inds = torch.zeros(2000, dtype=torch.long, device='cuda')
        gt_inds[:num_pos] = 1
        assign = AssignResult(1, gt_inds, torch.ones(2000, device='cuda'),
                              torch.zeros(2000, device='cuda'))
        torch.manual_seed(0)
        priors = torch.rand(2000, 4, device='cuda')
        gts = InstanceData(bboxes=torch.zeros(1, 4, device='cuda'),
                           labels=torch.zeros(1, dtype=torch.long,
                                              device='cuda'))
        sampler().sample(assign, InstanceData(priors=priors), gts)
        return torch.get_rng_state(), torch.cuda.get_rng_state()

    cpu_a, cuda_a = state_after(5)
    cpu_b, cuda_b = state_after(700)
    assert torch.equal(cpu_a, cpu_b) and torch.equal(cuda_a, cuda_b)
