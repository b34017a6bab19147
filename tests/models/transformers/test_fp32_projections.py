"""``fp32_projections`` of CoMultiScaleDeformableAttention: under autocast
the module computes exactly its fp32 output and gradients (the same
operations in fp32 on inputs cast once), with a few casts where the
default makes about fifteen; without autocast, and in float64, it changes
nothing. bf16 autocast on the CPU stands in for the GPU's fp16."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from projects.codetr.models import CoMultiScaleDeformableAttention

DIMS = 32


class CastCounter(TorchDispatchMode):
    """Counts the dtype casts dispatched (``_to_copy``)."""

    def __init__(self) -> None:
        super().__init__()
        self.casts = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split('.')[0] == '_to_copy':
            self.casts += 1
        return func(*args, **(kwargs or {}))


def attention(fp32_projections, dtype=torch.float32):
    torch.manual_seed(0)
    attn = CoMultiScaleDeformableAttention(
        embed_dims=DIMS, num_heads=4, num_levels=2, num_points=3,
        batch_first=True, dropout=0.0, fp32_projections=fp32_projections)
    for p in attn.parameters():  # non-trivial offsets and weights
        torch.nn.init.normal_(p, std=0.1)
    return attn.to(dtype)


def inputs(dtype=torch.float32, query_dtype=None):
    """Inputs as an encoder layer gets them; ``query_dtype`` for a query
    that arrives in the autocast dtype (the first layer's features)."""
    shapes = torch.tensor([[6, 8], [3, 4]])
    gen = torch.Generator().manual_seed(1)
    query = torch.randn(2, 60, DIMS, generator=gen, dtype=torch.float64)
    return dict(
        query=query.to(query_dtype or dtype).requires_grad_(),
        query_pos=torch.randn(2, 60, DIMS, generator=gen).to(dtype),
        reference_points=torch.rand(2, 60, 2, 2, generator=gen).to(dtype),
        spatial_shapes=shapes,
        level_start_index=torch.tensor([0, 48]))


def output_and_grads(attn, args, autocast=False):
    """The output and the gradients of the query and parameters; the
    forward under bf16 autocast if asked, the backward outside it, as a
    training step runs them."""
    attn.zero_grad()
    args['query'].grad = None
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        out = attn(**args)
    out.float().square().sum().backward()
    return [out.detach(), args['query'].grad.clone()] + [
        p.grad.clone() for p in attn.parameters()
    ]


@pytest.mark.parametrize('query_dtype', [torch.float32, torch.bfloat16])
def test_under_autocast_it_is_the_fp32_module(query_dtype):
    args = inputs(query_dtype=query_dtype)
    mine = output_and_grads(attention(True), args, autocast=True)
    default = output_and_grads(attention(False), args, autocast=True)
    # the fp32 module on the same query values
    ref_args = dict(inputs(),
                    query=args['query'].detach().float().requires_grad_())
    ref = output_and_grads(attention(False), ref_args)
    # the same operations, bit for bit (the query's gradient arrives in
    # its own dtype)
    assert mine[1].dtype == query_dtype
    mine[1] = mine[1].float()
    if query_dtype == torch.bfloat16:
        ref[1] = ref[1].to(query_dtype).float()
    for a, b in zip(mine, ref):
        assert a.dtype == b.dtype and torch.equal(a, b)
    # the default runs the projections in bf16: the check can fail
    assert not torch.equal(default[0].float(), ref[0])


def test_few_casts_where_the_default_makes_many():
    counts = {}
    for option in (False, True):
        attn, args = attention(option), inputs(query_dtype=torch.bfloat16)
        with CastCounter() as counter:
            output_and_grads(attn, args, autocast=True)
        counts[option] = counter.casts
    # the query, and its gradient back to bf16
    assert counts[True] == 2
    assert counts[False] >= 10


def test_no_effect_without_autocast_and_in_float64():
    for dtype in (torch.float32, torch.float64):
        on = output_and_grads(attention(True, dtype), inputs(dtype))
        off = output_and_grads(attention(False, dtype), inputs(dtype))
        for a, b in zip(on, off):
            assert a.dtype == dtype and torch.equal(a, b)
    out = output_and_grads(attention(True, torch.float64),
                           inputs(torch.float64), autocast=True)[0]
    assert out.dtype == torch.float64


def test_the_option_reaches_the_layers_from_a_config():
    from codetr_testing import build_model, tiny_model_cfg
    cfg = tiny_model_cfg()
    transformer = cfg.query_head.transformer
    transformer.encoder.layer_cfg.self_attn_cfg.fp32_projections = True
    transformer.decoder.layer_cfg.cross_attn_cfg.fp32_projections = True
    model = build_model(cfg)
    attns = [
        m for m in model.modules()
        if isinstance(m, CoMultiScaleDeformableAttention)
    ]
    assert attns and all(m.fp32_projections for m in attns)


def test_a_training_step_casts_fewer_times_by_tens_per_module():
    """The tiny K=0 model (bf16 autocast; the backward outside it): the
    option takes at least 20 casts per deformable attention module out of
    the step (25 with this torch: 312 -> 237 for 3 modules)."""
    from codetr_testing import build_model, make_batch, tiny_model_cfg
    counts = {}
    for option in (False, True):
        cfg = tiny_model_cfg()
        cfg.rpn_head, cfg.roi_head, cfg.bbox_head = None, None, None
        transformer = cfg.query_head.transformer
        transformer.encoder.layer_cfg.self_attn_cfg.fp32_projections = \
            option
        transformer.decoder.layer_cfg.cross_attn_cfg.fp32_projections = \
            option
        model = build_model(cfg).train()
        inputs, samples = make_batch(model, num_boxes=(3, 2))
        torch.manual_seed(0)
        with CastCounter() as counter:
            with torch.autocast('cpu', dtype=torch.bfloat16):
                losses = model.loss(inputs, samples)
            model.parse_losses(losses)[0].backward()
        counts[option] = counter.casts
        modules = sum(
            isinstance(m, CoMultiScaleDeformableAttention)
            for m in model.modules())
    assert counts[False] - counts[True] >= 20 * modules, (counts, modules)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_fp16_autocast_gives_the_fp32_output_on_the_gpu():
    """mmcv's CUDA op: the forward is the fp32 module's (its backward
    accumulates with atomics, so gradients only to rounding)."""
    attn = attention(True).cuda()
    args = {k: v.detach().cuda() for k, v in inputs().items()}
    args['query'].requires_grad_()
    fp32 = output_and_grads(attn, args)
    attn.zero_grad()
    args['query'].grad = None
    with torch.autocast('cuda', dtype=torch.float16):
        out = attn(**args)
    out.float().square().sum().backward()
    mine = [out.detach(), args['query'].grad] + [
        p.grad for p in attn.parameters()
    ]
    assert torch.equal(mine[0], fp32[0])
    for a, b in zip(mine[1:], fp32[1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
