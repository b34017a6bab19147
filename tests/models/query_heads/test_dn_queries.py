"""Co-DINO's denoising queries (``CoCdnQueryGenerator``) equal mmdet's
``CdnQueryGenerator`` output for output, from the same random draws, with
the target counts and image sizes taken from the host."""
import pytest
import torch
from mmdet.models.layers import CdnQueryGenerator
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData

from projects.codetr.analysis.host_syncs import count_cuda_syncs
from projects.codetr.models.query_heads.co_dino_head import CoCdnQueryGenerator

CFG = dict(num_classes=7, embed_dims=16, num_matching_queries=30,
           label_noise_scale=0.5, box_noise_scale=1.0,
           group_cfg=dict(dynamic=True, num_groups=None, num_dn_queries=20))


def samples(counts, dtype=torch.float32, device='cpu'):
    out = []
    gen = torch.Generator().manual_seed(len(counts))
    for i, n in enumerate(counts):
        h, w = 300 + 20 * i, 400 - 30 * i
        xy = torch.rand(n, 2, generator=gen) * torch.tensor([w / 2, h / 2])
        wh = torch.rand(n, 2, generator=gen) * torch.tensor([w / 2, h / 2])
        sample = DetDataSample(metainfo=dict(img_shape=(h, w)))
        sample.gt_instances = InstanceData(
            bboxes=torch.cat([xy, xy + wh], 1).to(device, dtype),
            labels=torch.randint(0, 7, (n, ), generator=gen).to(device))
        out.append(sample)
    return out


def pair(dtype=torch.float32, device='cpu'):
    ours = CoCdnQueryGenerator(**CFG).to(device, dtype)
    ref = CdnQueryGenerator(**CFG).to(device, dtype)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


@pytest.mark.parametrize('counts', ([3, 0, 5], [4, 4], [0, 0], [1], [25]))
def test_equal_to_mmdets_generator(counts):
    ours, ref = pair()
    batch = samples(counts)
    torch.manual_seed(3)
    out = ours(batch)
    state = torch.get_rng_state()
    torch.manual_seed(3)
    expected = ref(batch)
    assert torch.equal(state, torch.get_rng_state())  # the same draws
    for a, b in zip(out[:3], expected[:3]):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert torch.equal(a, b)
    assert out[3] == expected[3]
    # the queries do land somewhere: mmdet's layout is not all zeros
    assert sum(counts) == 0 or out[0].abs().sum() > 0


def test_float64_queries_and_the_tensor_signature():
    ours, _ = pair(torch.float64)
    batch = samples([2, 5], torch.float64)
    torch.manual_seed(0)
    label_query, bbox_query, _, meta = ours(batch)
    assert label_query.dtype == bbox_query.dtype == torch.float64
    assert meta['num_denoising_queries'] == label_query.size(1)
    # mmdet's collate signature (image of each target as a tensor) agrees
    flat_label = torch.randn(7 * 2 * 2, 16, dtype=torch.float64)
    flat_bbox = torch.randn(7 * 2 * 2, 4, dtype=torch.float64)
    batch_idx = torch.tensor([0, 0, 1, 1, 1, 1, 1])
    a = ours.collate_dn_queries(flat_label, flat_bbox, batch_idx, 2, 2)
    b = ours.collate_by_counts(flat_label, flat_bbox, [2, 5], 2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.gpu
def test_on_cuda_only_the_noisy_label_draw_reads_back():
    ours, ref = pair(device='cuda')
    batch = samples([3, 0, 6], device='cuda')
    torch.manual_seed(1)
    out = []
    syncs = count_cuda_syncs(lambda: out.append(ours(batch)))
    # mmdet's nonzero of the chosen labels; mmdet's own generator reads
    # more (the counts, the sizes)
    assert sum(syncs.values()) == 1, syncs
    torch.manual_seed(1)
    ref_syncs = count_cuda_syncs(lambda: out.append(ref(batch)))
    assert sum(ref_syncs.values()) > 1
    for a, b in zip(out[0][:3], out[1][:3]):
        assert torch.equal(a, b)
