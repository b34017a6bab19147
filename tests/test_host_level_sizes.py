"""Level sizes read back once (``host_level_sizes``) give mmdet's stage
functions exactly the values they compute from the shape tensor."""
import torch
from mmdet.models.detectors.deformable_detr import DeformableDETR
from mmdet.models.layers import DeformableDetrTransformerEncoder

from projects.codetr.models.transformers.co_deformable_detr_layers import \
    host_level_sizes

SHAPES = torch.tensor([[20, 25], [10, 13], [5, 7], [3, 4]])


def test_sizes_are_python_ints():
    sizes = host_level_sizes(SHAPES)
    assert sizes == [(20, 25), (10, 13), (5, 7), (3, 4)]
    assert all(type(v) is int for hw in sizes for v in hw)


def test_encoder_reference_points_are_identical():
    ratios = torch.tensor([[[1.0, 1.0]] * 4, [[0.8, 0.6]] * 4])
    get = DeformableDetrTransformerEncoder.get_encoder_reference_points
    ours = get(host_level_sizes(SHAPES), ratios, device='cpu')
    assert torch.equal(ours, get(SHAPES, ratios, device='cpu'))


def test_two_stage_proposals_are_identical():
    torch.manual_seed(0)
    host = torch.nn.Module()
    host.memory_trans_fc = torch.nn.Linear(8, 8)
    host.memory_trans_norm = torch.nn.LayerNorm(8)
    num = int(SHAPES.prod(1).sum())
    memory = torch.randn(2, num, 8)
    mask = torch.zeros(2, num, dtype=torch.bool)
    mask[1, ::3] = True
    gen = DeformableDETR.gen_encoder_output_proposals
    for memory_mask in (mask, None):
        ours = gen(host, memory, memory_mask, host_level_sizes(SHAPES))
        theirs = gen(host, memory, memory_mask, SHAPES)
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b)


def test_tracing_keeps_the_tensor():
    def sizes_as_tensor(shapes):
        out = host_level_sizes(shapes)
        assert out is shapes  # not read back: the graph stays dynamic
        return shapes * 1

    torch.jit.trace(sizes_as_tensor, (SHAPES, ), check_trace=False)
