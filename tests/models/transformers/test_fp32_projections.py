"""``fp32_projections`` of CoMultiScaleDeformableAttention: under autocast
the module computes exactly its fp32 output and gradients (the same
operations in fp32, each distinct input cast once), with no casts for
fp32 inputs where the default makes 31 per forward and backward; without
autocast, in float64 and for a half-precision module, it changes nothing.

bf16 autocast on the CPU stands in for the GPU's fp16 inside the module.
Around it the two differ: CPU autocast keeps LayerNorm and GroupNorm in
bf16, where CUDA's runs them in fp32, so on the CPU the first encoder
layer's query arrives in bf16 and the option's fp32 output changes the
dtype of what follows (on a GPU every module gets fp32 inputs either
way)."""
import pytest
import torch
from codetr_testing import CastCounter

from projects.codetr.models import CoMultiScaleDeformableAttention

DIMS = 32


def attention(fp32_projections, dtype=torch.float32):
    torch.manual_seed(0)
    attn = CoMultiScaleDeformableAttention(
        embed_dims=DIMS, num_heads=4, num_levels=2, num_points=3,
        batch_first=True, dropout=0.0, fp32_projections=fp32_projections)
    for p in attn.parameters():  # non-trivial offsets and weights
        torch.nn.init.normal_(p, std=0.1)
    return attn.to(dtype)


def inputs(dtype=torch.float32, query_dtype=None, encoder_call=False):
    """Inputs as an encoder layer gets them (``encoder_call``: the same
    tensor as query, key and value, as mmdet's encoder layer passes it);
    ``query_dtype`` for a query in the autocast dtype."""
    shapes = torch.tensor([[6, 8], [3, 4]])
    gen = torch.Generator().manual_seed(1)
    query = torch.randn(2, 60, DIMS, generator=gen, dtype=torch.float64)
    query = query.to(query_dtype or dtype).requires_grad_()
    args = dict(
        query=query,
        query_pos=torch.randn(2, 60, DIMS, generator=gen).to(dtype),
        reference_points=torch.rand(2, 60, 2, 2, generator=gen).to(dtype),
        spatial_shapes=shapes,
        level_start_index=torch.tensor([0, 48]))
    if encoder_call:
        args.update(key=query, value=query)
    return args


def decoder_inputs(value_dtype=torch.float32):
    """Inputs as a decoder layer's cross-attention gets them: its own
    query (with a separate identity), the encoder's memory as the value,
    a padding mask and reference boxes."""
    gen = torch.Generator().manual_seed(2)
    query = torch.randn(2, 7, DIMS, generator=gen).requires_grad_()
    padding = torch.zeros(2, 60, dtype=torch.bool)
    padding[1, 40:48] = True
    return dict(
        query=query,
        value=torch.randn(2, 60, DIMS, generator=gen).to(value_dtype),
        identity=torch.randn(2, 7, DIMS, generator=gen),
        query_pos=torch.randn(2, 7, DIMS, generator=gen),
        key_padding_mask=padding,
        reference_points=0.2 + 0.6 * torch.rand(2, 7, 2, 4, generator=gen),
        spatial_shapes=torch.tensor([[6, 8], [3, 4]]),
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


def cast_count(fp32_projections, args):
    attn = attention(fp32_projections)
    with CastCounter() as counter:
        output_and_grads(attn, args, autocast=True)
    return counter.count


def test_no_casts_for_fp32_inputs_where_the_default_makes_31():
    """fp32 inputs, as every module gets them on a GPU (CUDA's autocast
    keeps LayerNorm and GroupNorm in fp32): the default casts the
    projections' inputs, weights, biases and outputs, 15 forward and 16
    backward with this torch (the bound leaves room for another torch's
    autocast lists); the option casts nothing."""
    assert cast_count(False, inputs()) >= 20
    assert cast_count(True, inputs()) == 0
    assert cast_count(True, decoder_inputs()) == 0


def test_each_distinct_input_is_cast_once():
    """The encoder's call (one bf16 tensor as query, key and value): one
    cast forward, one for its gradient; a bf16 value beside an fp32 query
    (the decoder's pattern) likewise."""
    args = inputs(query_dtype=torch.bfloat16, encoder_call=True)
    assert cast_count(True, args) == 2
    assert cast_count(True, decoder_inputs(torch.bfloat16)) == 1


def test_decoder_pattern_is_the_fp32_module():
    """Separate value and identity, a padding mask and reference boxes."""
    args = decoder_inputs()
    mine = output_and_grads(attention(True), args, autocast=True)
    ref = output_and_grads(attention(False), args)
    for a, b in zip(mine, ref):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_half_precision_module_keeps_the_default_path():
    """A module whose weights are bf16 (``model.half()``-style) cannot
    take fp32 inputs: the option leaves it on mmcv's path."""
    torch.manual_seed(0)
    outs = []
    for option in (False, True):
        attn = attention(option, torch.bfloat16)
        args = inputs(torch.bfloat16)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            outs.append(attn(**args).detach())
    assert torch.equal(outs[0], outs[1])


def test_no_effect_without_autocast_and_in_float64():
    """Without autocast the option's module is the default's; a float64
    module under autocast (which leaves float64 alone) stays float64 and
    is the default's too, values and gradients."""
    for dtype, autocast in ((torch.float32, False), (torch.float64, False),
                            (torch.float64, True)):
        on = output_and_grads(
            attention(True, dtype), inputs(dtype), autocast=autocast)
        off = output_and_grads(
            attention(False, dtype), inputs(dtype), autocast=autocast)
        for a, b in zip(on, off):
            assert a.dtype == dtype and torch.equal(a, b)


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
    the step. On the CPU the count also holds the casts that the option's
    fp32 outputs save or add downstream (CPU autocast keeps LayerNorm in
    bf16; the module docstring), so it is not a GPU's count."""
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
        counts[option] = counter.count
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
