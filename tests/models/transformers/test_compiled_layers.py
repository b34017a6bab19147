"""``compile_layers``: the encoder and decoder layers through torch.compile.

Tiny layers on the CPU. Numerical agreement with the eager layers is
checked with Inductor (the backend the option uses on GPU, here generating
C++); recompilation counts and graph structure with a recording
``aot_eager`` backend (dynamo and AOTAutograd as with Inductor, no code
generation: fast). Compilation caches are reset around each test.
"""
import warnings

import pytest
import torch
from mmcv.ops.multi_scale_deform_attn import \
    multi_scale_deformable_attn_pytorch
from torch import nn

from projects.codetr.models.task_modules.level_shapes import \
    level_shape_tensors
from projects.codetr.models.transformers import compiled_layers
from projects.codetr.models.transformers.co_deformable_detr_layers import (
    CoDeformableDetrTransformerDecoder, CoDeformableDetrTransformerEncoder)
from projects.codetr.models.transformers.co_dino_decoder import \
    CoDinoTransformerDecoder
from projects.codetr.models.transformers.compiled_layers import (
    ms_deform_attn, ms_deform_attn_backward)

DIMS, HEADS, LEVELS, POINTS, FFN = 32, 4, 2, 2, 64

needs_inductor = pytest.mark.skipif(
    compiled_layers.compile_unavailable('cpu') is not None,
    reason='Inductor cannot compile for the CPU here: '
    f"{compiled_layers.compile_unavailable('cpu')}")


@pytest.fixture(autouse=True)
def fresh_compile_caches():
    """Compiled code and its recompilation budget are per code object and
    process-wide: each test starts from none."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class RecordingBackend:
    """``aot_eager``, keeping every graph dynamo hands it."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        from torch._dynamo.backends.registry import lookup_backend
        return lookup_backend('aot_eager')(gm, example_inputs)

    def op_counts(self):
        """Per graph, how many deformable sampling operators it calls."""
        return [
            sum(node.target is torch.ops.codetr.ms_deform_attn.default
                for node in gm.graph.nodes) for gm in self.graphs
        ]


def attn_cfg(dims=DIMS, heads=HEADS, levels=LEVELS):
    return dict(
        embed_dims=dims,
        num_heads=heads,
        num_levels=levels,
        num_points=POINTS,
        dropout=0.0,
        batch_first=True)


def ffn_cfg(dims=DIMS):
    return dict(embed_dims=dims, feedforward_channels=FFN, ffn_drop=0.0)


def build(cls, compile_layers, num_layers=2, seed=0, dtype=torch.float64,
          **kwargs):
    """A tiny encoder or decoder with non-trivial weights."""
    if cls is CoDeformableDetrTransformerEncoder:
        layer_cfg = dict(self_attn_cfg=attn_cfg(), ffn_cfg=ffn_cfg())
    else:
        dims = 256 if cls is CoDinoTransformerDecoder else DIMS
        heads = 8 if cls is CoDinoTransformerDecoder else HEADS
        layer_cfg = dict(
            self_attn_cfg=dict(
                embed_dims=dims,
                num_heads=heads,
                attn_drop=0.0,
                proj_drop=0.0,
                batch_first=True),
            cross_attn_cfg=attn_cfg(dims, heads),
            ffn_cfg=ffn_cfg(dims))
        kwargs.setdefault('post_norm_cfg', None)
    torch.manual_seed(seed)
    module = cls(
        num_layers=num_layers,
        layer_cfg=layer_cfg,
        compile_layers=compile_layers,
        **kwargs)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    return module.to(dtype)


def levels(h, w):
    sizes = [(h, w), ((h + 1) // 2, (w + 1) // 2)]
    shapes, starts = level_shape_tensors(sizes, 'cpu')
    return shapes, starts, sum(a * b for a, b in sizes)


def encoder_inputs(h=6, w=8, bs=2, dtype=torch.float64, seed=0, mask=True):
    gen = torch.Generator().manual_seed(seed)
    shapes, starts, num = levels(h, w)
    padding = None
    if mask:  # the second image's last columns are padding
        padding = torch.zeros(bs, num, dtype=torch.bool)
        padding[1, -2:] = True
    return dict(
        query=torch.randn(bs, num, DIMS, generator=gen).to(dtype),
        query_pos=torch.randn(bs, num, DIMS, generator=gen).to(dtype),
        key_padding_mask=padding,
        spatial_shapes=shapes,
        level_start_index=starts,
        valid_ratios=(0.7 + 0.3 * torch.rand(bs, LEVELS, 2,
                                             generator=gen)).to(dtype))


def decoder_inputs(num_query=7, h=6, w=8, bs=2, dtype=torch.float64, seed=0,
                   dims=DIMS, blocks=None):
    """Decoder inputs; ``blocks`` (query counts) gives a block-diagonal
    self-attention mask, as the joint decoding of positive queries."""
    gen = torch.Generator().manual_seed(seed)
    shapes, starts, num = levels(h, w)
    inputs = dict(
        query=torch.randn(bs, num_query, dims, generator=gen).to(dtype),
        value=torch.randn(bs, num, dims, generator=gen).to(dtype),
        key_padding_mask=torch.zeros(bs, num, dtype=torch.bool),
        reference_points=(0.2 + 0.6 * torch.rand(
            bs, num_query, 4, generator=gen)).to(dtype),
        spatial_shapes=shapes,
        level_start_index=starts,
        valid_ratios=(0.7 + 0.3 * torch.rand(bs, LEVELS, 2,
                                             generator=gen)).to(dtype))
    inputs['key_padding_mask'][0, -3:] = True
    if dims == DIMS:  # Co-DINO makes its own from the reference boxes
        inputs['query_pos'] = torch.randn(
            bs, num_query, dims, generator=gen).to(dtype)
    inputs['self_attn_mask'] = None
    if blocks is not None:
        ids = torch.repeat_interleave(
            torch.arange(len(blocks)), torch.tensor(blocks))
        inputs['self_attn_mask'] = ids[:, None] != ids[None, :]
    return inputs


def reg_branches(num_layers=2, dims=DIMS, dtype=torch.float64):
    torch.manual_seed(1)
    return nn.ModuleList(nn.Linear(dims, 4)
                         for _ in range(num_layers)).to(dtype)


def run(module, inputs, grad_inputs=('query', ), **kwargs):
    """Forward, and backward of a fixed function of the outputs; the
    outputs and the gradients of the inputs and parameters."""
    inputs = {
        k: v.clone().requires_grad_() if k in grad_inputs else v
        for k, v in inputs.items()
    }
    out = module(**inputs, **kwargs)
    outs = out if isinstance(out, tuple) else (out, )
    if torch.is_grad_enabled() and outs[0].requires_grad:
        gen = torch.Generator().manual_seed(3)
        loss = sum((o * torch.randn(o.shape, generator=gen).to(o)).sum()
                   for o in outs)
        loss.backward()
    grads = {f'input.{k}': inputs[k].grad for k in grad_inputs}
    grads.update({n: p.grad for n, p in module.named_parameters()})
    return [o.detach() for o in outs], grads


def float32_bound(num_layers, backward=False):
    """A bound on |compiled - eager| / max |eager| in float32, from
    rounding alone (not measured): each of the two computations rounds
    about ``ops`` times per layer in a row (projections, softmax, the
    sampling arithmetic, residuals, LayerNorm, FFN; twice that in the
    backward), each step with at most ``n`` accumulated terms (the longest
    reduction: the FFN's hidden width) of relative error ``u`` (unit
    roundoff), relative to the tensor's scale."""
    u = torch.finfo(torch.float32).eps / 2
    ops = 12 * (2 if backward else 1)
    return 2 * u * FFN * ops * num_layers


def assert_agree(eager, compiled, rtol, atol_scale):
    """Outputs and gradients agree: |diff| <= rtol |eager| + atol_scale
    max |eager| per tensor."""
    (out_e, grad_e), (out_c, grad_c) = eager, compiled
    for a, b in zip(out_e, out_c):
        torch.testing.assert_close(
            b, a, rtol=rtol, atol=atol_scale * a.abs().max().item())
    assert grad_e.keys() == grad_c.keys()
    missing = [k for k, g in grad_e.items() if g is None]
    assert not missing, f'no gradient: {missing}'
    for name in grad_e:
        a, b = grad_e[name], grad_c[name]
        torch.testing.assert_close(
            b, a, rtol=rtol, atol=atol_scale * a.abs().max().item(),
            msg=lambda m: f'{name}: {m}')


# --------------------------------------------------------------------------
# The option off
# --------------------------------------------------------------------------
@pytest.mark.parametrize('cls', [
    CoDeformableDetrTransformerEncoder, CoDeformableDetrTransformerDecoder,
    CoDinoTransformerDecoder
])
def test_off_calls_the_layers_themselves(cls, monkeypatch):
    module = build(cls, False)
    assert module.compile_layers is False
    for layer in module.layers:
        assert module.layer_runner(layer) is layer
        assert layer._compiled_call_impl is None
        assert 'forward' not in vars(layer)

    def no_compile(*args, **kwargs):
        raise AssertionError('torch.compile called with the option off')

    monkeypatch.setattr(torch, 'compile', no_compile)
    if cls is CoDeformableDetrTransformerEncoder:
        run(module, encoder_inputs())
    else:
        dims = 256 if cls is CoDinoTransformerDecoder else DIMS
        run(module,
            decoder_inputs(dims=dims),
            reg_branches=reg_branches(dims=dims))


def test_option_is_checked():
    with pytest.raises(TypeError, match='compile_layers'):
        build(CoDeformableDetrTransformerEncoder, 'yes')


# --------------------------------------------------------------------------
# The sampling operator
# --------------------------------------------------------------------------
def _op_inputs(dtype=torch.float64, requires_grad=False):
    gen = torch.Generator().manual_seed(0)
    shapes, starts, num = levels(5, 6)
    bs, nq = 2, 5
    tensors = [
        torch.randn(bs, num, HEADS, 8, generator=gen),
        torch.rand(bs, nq, HEADS, LEVELS, POINTS, 2, generator=gen) * 1.2 -
        0.1,
        torch.rand(bs, nq, HEADS, LEVELS, POINTS, generator=gen)
    ]
    value, locations, weights = (
        t.to(dtype).requires_grad_(requires_grad) for t in tensors)
    return value, shapes, starts, locations, weights


def test_sampling_op_and_its_gradient_are_mmcvs():
    value, shapes, starts, locations, weights = _op_inputs(requires_grad=True)
    ours = ms_deform_attn(value, shapes, starts, locations, weights, 64)
    ref = multi_scale_deformable_attn_pytorch(value, shapes, locations,
                                              weights)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    grad = torch.randn(ref.shape, dtype=ref.dtype,
                       generator=torch.Generator().manual_seed(1))
    expected = torch.autograd.grad(ref, (value, locations, weights), grad)
    got = ms_deform_attn_backward(value.detach(), shapes, starts,
                                  locations.detach(), weights.detach(), grad,
                                  64)
    for name, a, b in zip(('value', 'locations', 'weights'), expected, got):
        torch.testing.assert_close(
            b, a, rtol=1e-12, atol=1e-12, msg=lambda m: f'{name}: {m}')
        assert b.is_contiguous()


def test_sampling_op_registration():
    """Schema, fake (meta) implementation and autograd formula as
    ``torch.library`` checks them (including under AOTAutograd with
    dynamic shapes)."""
    value, shapes, starts, locations, weights = _op_inputs(requires_grad=True)
    torch.library.opcheck(
        torch.ops.codetr.ms_deform_attn.default,
        (value, shapes, starts, locations, weights, 64))


# --------------------------------------------------------------------------
# Compiled against eager, Inductor
# --------------------------------------------------------------------------
@needs_inductor
@pytest.mark.parametrize('dtype', [
    torch.float64,
    pytest.param(
        torch.float32,
        # Inductor's C++ compilation of a layer, forward and backward:
        # 30-90 s on a 2-core CPU with a cold cache
        marks=pytest.mark.slow)
])
def test_compiled_encoder_agrees_with_eager(dtype):
    """Training mode with the first layer checkpointed (``num_cp``):
    outputs and all gradients (inputs' and parameters')."""
    eager = build(CoDeformableDetrTransformerEncoder, False, num_cp=1,
                  dtype=dtype).train()
    compiled = build(CoDeformableDetrTransformerEncoder, True, num_cp=1,
                     dtype=dtype).train()
    inputs = encoder_inputs(dtype=dtype)
    grad_inputs = ('query', 'query_pos')
    results = [run(m, inputs, grad_inputs) for m in (eager, compiled)]
    if dtype == torch.float64:
        assert_agree(*results, rtol=1e-10, atol_scale=1e-10)
    else:
        assert_agree(
            results[0], results[1], rtol=float32_bound(2, backward=True),
            atol_scale=float32_bound(2, backward=True))


@needs_inductor
@pytest.mark.slow  # as the float32 encoder above
def test_compiled_decoder_agrees_with_eager():
    """Box refinement, look-forward-twice and a block-diagonal
    self-attention mask (joint decoding), float64."""
    eager = build(CoDeformableDetrTransformerDecoder, False).train()
    compiled = build(CoDeformableDetrTransformerDecoder, True).train()
    inputs = decoder_inputs(num_query=7, blocks=[4, 3])
    grad_inputs = ('query', 'value', 'query_pos', 'reference_points')
    results = [
        run(m, inputs, grad_inputs, reg_branches=reg_branches())
        for m in (eager, compiled)
    ]
    assert_agree(*results, rtol=1e-10, atol_scale=1e-10)


# --------------------------------------------------------------------------
# Compilations, graph breaks and the other modes (aot_eager)
# --------------------------------------------------------------------------
def test_one_compilation_for_all_layers_and_sizes():
    """Three layers, four image sizes and query counts: each layer kind
    compiles once (the bound asked for: at most 2), into one graph per
    call with the sampling operator inside (no graph break)."""
    enc_backend, dec_backend = RecordingBackend(), RecordingBackend()
    encoder = build(CoDeformableDetrTransformerEncoder,
                    dict(backend=enc_backend), num_layers=3).train()
    decoder = build(CoDeformableDetrTransformerDecoder,
                    dict(backend=dec_backend), num_layers=3).train()
    branches = reg_branches(3)
    sizes = [(6, 8), (7, 9), (5, 10), (8, 8)]
    for step, (h, w) in enumerate(sizes):
        memory, _ = run(encoder, encoder_inputs(h, w, seed=step))
        run(decoder,
            decoder_inputs(num_query=5 + 2 * step, h=h, w=w, seed=step,
                           blocks=[3, 2 + 2 * step]),
            reg_branches=branches)
    assert len(enc_backend.graphs) == 1, 'encoder compilations'
    assert len(dec_backend.graphs) == 1, 'decoder compilations'
    assert enc_backend.op_counts() == [1]
    assert dec_backend.op_counts() == [1]


def test_checkpointed_layers_and_modes_run_compiled():
    """Checkpointed layers, eval without grad, inference mode and frozen
    parameters run the compiled code (one compilation each) and give the
    eager values."""
    backend = RecordingBackend()
    eager = build(CoDeformableDetrTransformerEncoder, False, num_cp=2)
    compiled = build(CoDeformableDetrTransformerEncoder,
                     dict(backend=backend), num_cp=2)
    inputs = encoder_inputs()

    def both(fn):
        return [fn(m) for m in (eager, compiled)]

    for module in (eager, compiled):
        module.train()
    assert_agree(*both(lambda m: run(m, inputs)), rtol=1e-12,
                 atol_scale=1e-12)
    for module in (eager, compiled):
        module.eval()
    with torch.no_grad():
        assert_agree(*both(lambda m: run(m, inputs, ())), 1e-12, 1e-12)
    with torch.inference_mode():  # inputs made there, as in a forward
        inference_inputs = {
            k: v.clone() if isinstance(v, torch.Tensor) else v
            for k, v in inputs.items()
        }
        assert_agree(*both(lambda m: run(m, inference_inputs, ())), 1e-12,
                     1e-12)
    for module in (eager, compiled):
        module.requires_grad_(False)
    outs = both(lambda m: run(m, inputs, ())[0])
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-12, atol=1e-12)
    # train (checkpointed), no_grad, inference_mode, frozen
    assert len(backend.graphs) == 4
    assert backend.op_counts() == [1] * 4


def test_autocast_keeps_the_sampling_in_float32():
    """Under (bf16) autocast the compiled layer hands the sampling operator
    float32 inputs, as the eager layer hands mmcv, and gives the eager
    layer's values within bf16 rounding."""
    backend = RecordingBackend()
    eager = build(CoDeformableDetrTransformerEncoder, False,
                  dtype=torch.float32).train()
    compiled = build(CoDeformableDetrTransformerEncoder,
                     dict(backend=backend), dtype=torch.float32).train()
    inputs = encoder_inputs(dtype=torch.float32)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        results = [run(m, inputs) for m in (eager, compiled)]
    (sampling, ) = [
        node for node in backend.graphs[0].graph.nodes
        if node.target is torch.ops.codetr.ms_deform_attn.default
    ]
    dtypes = [
        arg.meta['example_value'].dtype for arg in sampling.args
        if isinstance(arg, torch.fx.Node) and arg.meta['example_value']
        .is_floating_point()
    ]
    assert dtypes == [torch.float32] * 3
    assert results[1][0][0].dtype == results[0][0][0].dtype
    bf16 = torch.finfo(torch.bfloat16).eps
    assert_agree(*results, rtol=4 * bf16, atol_scale=4 * bf16)


@pytest.mark.parametrize('fp32_projections', [False, True])
def test_autocast_forward_backward_outside_it_as_eager(fp32_projections):
    """A training step's pattern: the forward under (bf16) autocast, the
    backward outside it. The compiled layers give the eager layers'
    outputs and gradients bit for bit, with the deformable attention's
    projections in bf16 (default) or fp32 (``fp32_projections``): the
    compiled backward is not traced under the forward's autocast, which
    would run the fp32 module's backward in bf16."""
    results = []
    for option in (False, dict(backend='aot_eager')):
        module = build(CoDeformableDetrTransformerEncoder, option,
                       dtype=torch.float32).train()
        for layer in module.layers:
            layer.self_attn.fp32_projections = fp32_projections
        inputs = encoder_inputs(dtype=torch.float32)
        inputs['query'].requires_grad_()
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = module(**inputs)
        out.float().square().sum().backward()
        results.append([out.detach(), inputs['query'].grad] +
                       [p.grad for p in module.parameters()])
    for eager, compiled in zip(*results):
        assert compiled.dtype == eager.dtype
        assert torch.equal(compiled, eager)


def test_co_dino_decoder_compiled():
    """Co-DINO's decoder (positional queries from the boxes, shared norm)
    with ``compile_layers``: the eager values, one compilation."""
    backend = RecordingBackend()
    eager = build(CoDinoTransformerDecoder, False).train()
    compiled = build(CoDinoTransformerDecoder,
                     dict(backend=backend)).train()
    inputs = decoder_inputs(dims=256, blocks=[4, 3])
    for step in range(2):  # a second query count reuses the graph
        if step:
            inputs = decoder_inputs(num_query=9, dims=256, blocks=[4, 5])
        results = [
            run(m, inputs, ('query', 'value'), reg_branches=reg_branches(
                dims=256)) for m in (eager, compiled)
        ]
        assert_agree(*results, rtol=1e-12, atol_scale=1e-12)
    assert len(backend.graphs) == 1


# --------------------------------------------------------------------------
# Fallback
# --------------------------------------------------------------------------
def test_unavailable_compiler_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(compiled_layers, '_UNAVAILABLE', {})
    monkeypatch.setattr(compiled_layers, 'compile_unavailable',
                        lambda *args: 'no C++ compiler (test)')
    eager = build(CoDeformableDetrTransformerEncoder, False)
    compiled = build(CoDeformableDetrTransformerEncoder, True)
    inputs = encoder_inputs()
    with pytest.warns(UserWarning, match='no C.. compiler .test.*eager'):
        out = compiled(**inputs)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        again = compiled(**inputs)
    torch.testing.assert_close(out, eager(**inputs), rtol=0, atol=0)
    torch.testing.assert_close(again, out, rtol=0, atol=0)


def test_failing_backend_falls_back_with_a_warning(monkeypatch):
    monkeypatch.setattr(compiled_layers, '_UNAVAILABLE', {})

    def broken(gm, example_inputs):
        raise RuntimeError('backend broken (test)')

    eager = build(CoDeformableDetrTransformerEncoder, False)
    compiled = build(CoDeformableDetrTransformerEncoder,
                     dict(backend=broken))
    inputs = encoder_inputs()
    with pytest.warns(UserWarning, match='failed to compile.*eager'):
        out = compiled(**inputs)
    torch.testing.assert_close(out, eager(**inputs), rtol=0, atol=0)


def test_config_switches_reach_the_modules():
    """The option from a model config (not run: that is what the tests
    above do)."""
    from codetr_testing import build_model, tiny_model_cfg
    cfg = tiny_model_cfg()
    cfg.query_head.transformer.encoder.compile_layers = True
    cfg.query_head.transformer.decoder.compile_layers = True
    transformer = build_model(cfg).query_head.transformer
    assert transformer.encoder.compile_layers is True
    assert transformer.decoder.compile_layers is True
    layer = transformer.decoder.layers[0]
    assert transformer.decoder.layer_runner(layer) is not layer


# --------------------------------------------------------------------------
# CUDA (make test-gpu)
# --------------------------------------------------------------------------
@pytest.mark.gpu
def test_cuda_sampling_op_is_mmcvs_function():
    """On CUDA the operator runs mmcv's kernels, forward and backward, as
    ``MultiScaleDeformableAttnFunction`` does."""
    from mmcv.ops.multi_scale_deform_attn import \
        MultiScaleDeformableAttnFunction
    value, shapes, starts, locations, weights = (
        t.cuda() for t in _op_inputs(torch.float32))
    leaves = [[t.clone().requires_grad_() for t in (value, locations, weights)]
              for _ in range(2)]
    (v0, l0, w0), (v1, l1, w1) = leaves
    ref = MultiScaleDeformableAttnFunction.apply(v0, shapes, starts, l0, w0,
                                                 64)
    ours = ms_deform_attn(v1, shapes, starts, l1, w1, 64)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    grad = torch.randn_like(ref)
    ref.backward(grad)
    ours.backward(grad)
    for a, b in zip(leaves[0], leaves[1]):
        # the backward kernel accumulates with atomics: the order of the
        # float32 additions differs between runs
        torch.testing.assert_close(
            b.grad, a.grad, rtol=1e-5, atol=1e-6 * a.grad.abs().max().item())


@pytest.mark.gpu
def test_compiled_encoder_agrees_with_eager_on_cuda():
    reason = compiled_layers.compile_unavailable('cuda')
    if reason is not None:
        pytest.skip(reason)
    eager = build(CoDeformableDetrTransformerEncoder, False, num_cp=1,
                  dtype=torch.float32).cuda().train()
    compiled = build(CoDeformableDetrTransformerEncoder, True, num_cp=1,
                     dtype=torch.float32).cuda().train()
    inputs = {
        k: v.cuda() if isinstance(v, torch.Tensor) else v
        for k, v in encoder_inputs(dtype=torch.float32).items()
    }
    inputs['spatial_shapes'], inputs['level_start_index'] = \
        level_shape_tensors([(6, 8), (3, 4)], 'cuda')
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        results = [
            run(m, inputs, ('query', 'query_pos')) for m in (eager, compiled)
        ]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    bound = float32_bound(2, backward=True)
    assert_agree(*results, rtol=bound, atol_scale=bound)
