"""LevelSortedRoIExtractor against mmdet's SingleRoIExtractor (the
reference): the same pooled features, bit for bit (each RoI is pooled by
the same RoI layer with the same inputs), and the same gradients of the
feature maps, for RoIs on every level, on some levels only, none at all,
of negative area, with a scale factor and in float64; no ``nonzero`` where
mmdet's makes one per level; on a GPU one synchronisation (the per-level
counts)."""
import pytest
import torch
from codetr_testing import load_config
from mmdet.registry import MODELS

import projects.codetr  # noqa: F401  (registers the extractor)
from projects.codetr.analysis.host_syncs import (count_cuda_syncs,
                                                 count_host_reads)

STRIDES = (4, 8, 16, 32)
CHANNELS = 8
IMG = 256


def extractors(device='cpu'):
    """The config's extractor and mmdet's with the same arguments."""
    cfg = load_config().model.roi_head.rcnn.bbox_roi_extractor
    cfg = dict(cfg, out_channels=CHANNELS, featmap_strides=list(STRIDES))
    assert cfg['type'] == 'LevelSortedRoIExtractor'
    return (MODELS.build(cfg).to(device),
            MODELS.build(dict(cfg, type='SingleRoIExtractor')).to(device))


def pyramid(dtype, device='cpu', seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(2, CHANNELS, IMG // s, IMG // s, generator=gen,
                    dtype=dtype).to(device).requires_grad_() for s in STRIDES
    ]


def rois_of_sides(sides, dtype, device='cpu', seed=0):
    """(n, 5) RoIs of the given sides (the side picks the level: below
    224 px level 0, below 448 level 1, below 896 level 2, else 3, with the
    config's finest_scale 112), random centres and images."""
    gen = torch.Generator().manual_seed(seed)
    sides = torch.as_tensor(sides, dtype=torch.float64)
    n = sides.numel()
    centres = torch.rand(n, 2, generator=gen, dtype=torch.float64) * IMG
    images = torch.randint(0, 2, (n, 1), generator=gen).double()
    boxes = torch.cat([centres - sides[:, None] / 2,
                       centres + sides[:, None] / 2], dim=1)
    return torch.cat([images, boxes], dim=1).to(device, dtype)


def pool_and_grad(extractor, feats, rois, weights, **kwargs):
    for f in feats:
        f.grad = None
    out = extractor(feats, rois, **kwargs)
    (out * weights).sum().backward()
    return out.detach(), [f.grad.clone() for f in feats]


def check_against_mmdet(feats, rois, **kwargs):
    ours, mmdets = extractors(feats[0].device)
    gen = torch.Generator().manual_seed(1)
    weights = torch.randn(rois.size(0), CHANNELS, 7, 7, generator=gen,
                          dtype=feats[0].dtype).to(feats[0].device)
    out, grads = pool_and_grad(ours, feats, rois, weights, **kwargs)
    ref, ref_grads = pool_and_grad(mmdets, feats, rois, weights, **kwargs)
    assert out.dtype == ref.dtype and torch.equal(out, ref)
    for g, r in zip(grads, ref_grads):
        # the same terms; atol covers another order of their sum
        bound = 16 * torch.finfo(r.dtype).eps * max(r.abs().max().item(), 1)
        torch.testing.assert_close(g, r, rtol=0, atol=bound)
    return out


# sides 20-1000 px: levels 0 to 3, each at least twice, in shuffled order
ALL_LEVELS = [30, 500, 120, 20, 250, 60, 900, 40, 150, 300, 35, 1000, 700]


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_every_level_gives_mmdets_features_and_gradients(dtype):
    out = check_against_mmdet(pyramid(dtype), rois_of_sides(ALL_LEVELS,
                                                            dtype))
    assert out.abs().sum() > 0


def test_levels_without_rois_and_a_scale_factor():
    # levels 1 and 3 only; then level 0 only
    check_against_mmdet(pyramid(torch.float32),
                        rois_of_sides([250, 900, 300, 1000], torch.float32))
    check_against_mmdet(pyramid(torch.float32),
                        rois_of_sides([20, 30], torch.float32),
                        roi_scale_factor=1.5)


def test_rois_of_negative_area_get_mmdets_zero_features():
    """Their scale is NaN and their level (NaN cast to long) no level:
    mmdet's loop leaves their features 0."""
    rois = rois_of_sides(ALL_LEVELS, torch.float32)
    rois[[2, 5], 3] = rois[[2, 5], 1] - 4  # x2 < x1
    out = check_against_mmdet(pyramid(torch.float32), rois)
    levels = extractors()[0].map_roi_levels(rois, len(STRIDES))
    # where NaN casts to a level (e.g. 0 on some CPUs), both pool from it
    if not ((levels[[2, 5]] >= 0) & (levels[[2, 5]] < len(STRIDES))).all():
        assert not out[[2, 5]].any() and out[[0, 1, 3, 4]].abs().sum() > 0


def test_non_finite_features_of_a_level_without_rois_spread_as_mmdets():
    """mmdet adds a level's zero term to every row and then overwrites the
    rows of the levels after it: an inf in the unused level makes the
    earlier levels' rows NaN, not the later ones'."""
    ours, mmdets = extractors()
    # RoIs of levels 1 and 3 (level 0 unused: every row overwritten later,
    # no NaN); of levels 0 and 3 (level 1 unused: level 0's rows NaN)
    for sides, unused, nan_rows in (([250, 900, 300, 1000], 0, []),
                                    ([30, 40, 900, 1000], 1, [0, 1])):
        feats = [f.detach() for f in pyramid(torch.float32)]
        feats[unused][0, 0, 0, 0] = float('inf')
        rois = rois_of_sides(sides, torch.float32)
        out, ref = ours(feats, rois), mmdets(feats, rois)
        assert ref.isnan().flatten(1).all(1).nonzero().flatten().tolist() \
            == nan_rows
        assert torch.equal(out.isnan(), ref.isnan())
        assert torch.equal(out.nan_to_num(), ref.nan_to_num())


def test_no_rois_keeps_every_level_in_the_graph():
    feats = pyramid(torch.float32)
    ours, _ = extractors()
    out = ours(feats, torch.zeros(0, 5))
    assert out.shape == (0, CHANNELS, 7, 7)
    out.sum().backward()
    assert all(f.grad is not None and not f.grad.any() for f in feats)


def test_no_nonzero_where_mmdets_makes_one_per_level():
    feats = pyramid(torch.float32)
    rois = rois_of_sides(ALL_LEVELS, torch.float32)
    ours, mmdets = extractors()
    reads, _ = count_host_reads(lambda: mmdets(feats, rois))
    assert reads == {'aten::nonzero': len(STRIDES)}
    # the CPU does not dispatch a read for tolist; the GPU test counts it
    reads, _ = count_host_reads(lambda: ours(feats, rois))
    assert sum(reads.values()) == 0, reads


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_one_synchronisation_and_mmdets_features_on_the_gpu():
    feats = pyramid(torch.float32, 'cuda')
    rois = rois_of_sides(ALL_LEVELS * 20, torch.float32, 'cuda')
    ours, mmdets = extractors('cuda')
    out, ref = ours(feats, rois), mmdets(feats, rois)  # kernels loaded
    assert torch.equal(out, ref)
    syncs = count_cuda_syncs(lambda: ours(feats, rois))
    assert sum(syncs.values()) == 1, syncs
    # the counter sees mmdet's per-level reads: the check can fail
    syncs = count_cuda_syncs(lambda: mmdets(feats, rois))
    assert sum(syncs.values()) >= len(STRIDES), syncs
