"""``torch.compile`` of the encoder and decoder layers (opt-in).

A Co-DETR training step on a fast GPU waits on the host: every layer issues
dozens of small kernels (projections, softmax, the sampling-location
arithmetic, residuals, LayerNorms, the FFN) forward and backward. With
``compile_layers=True`` on :class:`~.CoDeformableDetrTransformerEncoder` or
on a decoder of this package, each layer runs through ``torch.compile``
(Inductor, forward and backward through AOTAutograd), which fuses those
chains. Off (the default) the layers are called as before.

- **One compiled function per layer kind.** The layer class's ``forward``
  is compiled once and called with the layer as its first argument; the
  parameters are graph inputs, so all layers of an encoder (and of other
  models in the process) share the compiled code instead of recompiling
  per instance.
- **Dynamic token counts.** The number of feature points (the image size)
  and of decoder queries (denoising groups, positive queries) change from
  step to step; their dimensions are marked dynamic before the first
  compilation, so a new size reuses the compiled code. Each other
  combination that changes the graph (training or eval, grad mode,
  autocast, a mask given or None) compiles once.
- **Deformable sampling stays opaque.** The bilinear sampling runs through
  the custom operator ``codetr::ms_deform_attn`` (:func:`ms_deform_attn`):
  mmcv's CUDA kernels forward and backward on GPU, mmcv's PyTorch path
  (and its gradient, :func:`_ms_deform_attn_pytorch_backward`) on CPU. The
  compiler sees its output shapes only (a registered fake implementation),
  so the graph does not break around it. Outside compilation the layers
  call mmcv exactly as before.
- **Fallback.** Where Inductor cannot work (no triton for CUDA, no C++
  compiler for the CPU, a Python that dynamo does not support, or a backend
  that fails to compile), the layers run eagerly, with one warning that
  says why.

``compile_layers`` also accepts a dict of ``torch.compile`` keyword
arguments (e.g. ``dict(mode='max-autotune-no-cudagraphs')``) instead of
``True``; ``dynamic`` defaults to None (sizes marked dynamic as above).
"""
import functools
import warnings
from typing import Callable, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from mmcv.ops.multi_scale_deform_attn import (
    ext_module, multi_scale_deformable_attn_pytorch)
from torch import Tensor, nn
from torch._functorch import config as functorch_config

#: Type of the ``compile_layers`` option.
CompileOption = Union[bool, dict]

#: Tensor arguments of a layer whose dimension 1 counts tokens (queries or
#: feature points) and changes between steps; ``self_attn_mask`` is
#: (num_queries, num_queries).
_TOKEN_DIMS: Dict[str, Tuple[int, ...]] = {
    'query': (1, ),
    'query_pos': (1, ),
    'key': (1, ),
    'value': (1, ),
    'key_pos': (1, ),
    'key_padding_mask': (1, ),
    'reference_points': (1, ),
    'self_attn_mask': (0, 1),
}


# --------------------------------------------------------------------------
# The deformable sampling as an operator the compiler does not trace into
# --------------------------------------------------------------------------
@torch.library.custom_op('codetr::ms_deform_attn', mutates_args=())
def ms_deform_attn(value: Tensor, spatial_shapes: Tensor,
                   level_start_index: Tensor, sampling_locations: Tensor,
                   attention_weights: Tensor, im2col_step: int) -> Tensor:
    """Multi-scale deformable sampling: mmcv's
    ``MultiScaleDeformableAttnFunction`` on CUDA, mmcv's
    ``multi_scale_deformable_attn_pytorch`` elsewhere.

    Arguments and shapes are mmcv's: ``value`` (bs, num_value, num_heads,
    head_dims), ``sampling_locations`` (bs, num_query, num_heads,
    num_levels, num_points, 2), ``attention_weights`` (bs, num_query,
    num_heads, num_levels, num_points); returns (bs, num_query,
    num_heads * head_dims) in ``value``'s dtype.
    """
    if value.is_cuda:
        # what MultiScaleDeformableAttnFunction.forward computes; the kernel
        # needs contiguous inputs, which a compiled graph need not hand over
        return ext_module.ms_deform_attn_forward(
            value.contiguous(),
            spatial_shapes.contiguous(),
            level_start_index.contiguous(),
            sampling_locations.type_as(value).contiguous(),
            attention_weights.type_as(value).contiguous(),
            im2col_step=im2col_step)
    return multi_scale_deformable_attn_pytorch(
        value, spatial_shapes, sampling_locations,
        attention_weights).contiguous()


@ms_deform_attn.register_fake
def _ms_deform_attn_fake(value, spatial_shapes, level_start_index,
                         sampling_locations, attention_weights, im2col_step):
    bs, _, num_heads, head_dims = value.shape
    return value.new_empty(
        (bs, sampling_locations.shape[1], num_heads * head_dims))


@torch.library.custom_op('codetr::ms_deform_attn_backward', mutates_args=())
def ms_deform_attn_backward(
        value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
        sampling_locations: Tensor, attention_weights: Tensor,
        grad_output: Tensor,
        im2col_step: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`ms_deform_attn` with respect to ``value``,
    ``sampling_locations`` and ``attention_weights``: mmcv's CUDA backward
    kernel (as ``MultiScaleDeformableAttnFunction.backward`` calls it) or
    :func:`_ms_deform_attn_pytorch_backward`."""
    if not value.is_cuda:
        return _ms_deform_attn_pytorch_backward(value, spatial_shapes,
                                                sampling_locations,
                                                attention_weights, grad_output)
    value = value.contiguous()
    locations = sampling_locations.type_as(value).contiguous()
    weights = attention_weights.type_as(value).contiguous()
    grad_value = torch.zeros_like(value)
    grad_locations = torch.zeros_like(locations)
    grad_weights = torch.zeros_like(weights)
    ext_module.ms_deform_attn_backward(
        value,
        spatial_shapes.contiguous(),
        level_start_index.contiguous(),
        locations,
        weights,
        grad_output.contiguous(),
        grad_value,
        grad_locations,
        grad_weights,
        im2col_step=im2col_step)
    return (grad_value.contiguous(),
            grad_locations.to(sampling_locations.dtype).contiguous(),
            grad_weights.to(attention_weights.dtype).contiguous())


@ms_deform_attn_backward.register_fake
def _ms_deform_attn_backward_fake(value, spatial_shapes, level_start_index,
                                  sampling_locations, attention_weights,
                                  grad_output, im2col_step):
    return (value.new_empty(value.shape),
            sampling_locations.new_empty(sampling_locations.shape),
            attention_weights.new_empty(attention_weights.shape))


def _setup_context(ctx, inputs, output) -> None:
    value, spatial_shapes, level_start_index, sampling_locations, \
        attention_weights, im2col_step = inputs
    ctx.save_for_backward(value, spatial_shapes, level_start_index,
                          sampling_locations, attention_weights)
    ctx.im2col_step = im2col_step


def _backward(ctx, grad_output):
    value, spatial_shapes, level_start_index, sampling_locations, \
        attention_weights = ctx.saved_tensors
    grad_value, grad_locations, grad_weights = ms_deform_attn_backward(
        value, spatial_shapes, level_start_index, sampling_locations,
        attention_weights, grad_output, ctx.im2col_step)
    return grad_value, None, None, grad_locations, grad_weights, None


ms_deform_attn.register_autograd(_backward, setup_context=_setup_context)


def _ms_deform_attn_pytorch_backward(
        value: Tensor, spatial_shapes: Tensor, sampling_locations: Tensor,
        attention_weights: Tensor,
        grad_output: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """The gradient of mmcv's ``multi_scale_deformable_attn_pytorch``,
    written out (inside an operator autograd does not record, so it cannot
    differentiate the forward again): per level the ``grid_sample``
    backward, and the weighted sum's.

    Returns:
        tuple[Tensor, Tensor, Tensor]: Gradients of ``value``,
        ``sampling_locations`` and ``attention_weights``.
    """
    bs, _, num_heads, head_dims = value.shape
    _, num_query, _, num_levels, num_points, _ = sampling_locations.shape
    sizes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    values = value.split([h * w for h, w in sizes], dim=1)
    grids = 2 * sampling_locations - 1
    # (bs, num_query, heads * dims) -> (bs * heads, dims, num_query, 1)
    grad = grad_output.transpose(1, 2).reshape(bs * num_heads, head_dims,
                                               num_query, 1)
    # (bs, num_query, heads, levels, points) -> (bs * heads, 1, num_query,
    # levels * points), as the forward lays the weights out
    weights = attention_weights.transpose(1, 2).reshape(
        bs * num_heads, 1, num_query, num_levels * num_points)
    grad_sampled = (grad * weights).view(bs * num_heads, head_dims,
                                         num_query, num_levels, num_points)
    sampled, grad_values, grad_grids = [], [], []
    for level, (h, w) in enumerate(sizes):
        value_l = values[level].flatten(2).transpose(1, 2).reshape(
            bs * num_heads, head_dims, h, w)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(
            F.grid_sample(
                value_l,
                grid_l,
                mode='bilinear',
                padding_mode='zeros',
                align_corners=False))
        grad_value_l, grad_grid_l = torch.ops.aten.grid_sampler_2d_backward(
            grad_sampled[:, :, :, level].contiguous(), value_l, grid_l, 0, 0,
            False, [True, True])
        grad_values.append(
            grad_value_l.reshape(bs, num_heads * head_dims,
                                 h * w).transpose(1, 2).reshape(
                                     bs, h * w, num_heads, head_dims))
        grad_grids.append(
            grad_grid_l.view(bs, num_heads, num_query, num_points,
                             2).transpose(1, 2))
    # d out / d weight = the sampled value, summed over the head's dims
    grad_weights = (torch.stack(sampled, dim=-2).flatten(-2) * grad).sum(
        1).view(bs, num_heads, num_query, num_levels,
                num_points).transpose(1, 2)
    grad_locations = 2 * torch.stack(grad_grids, dim=3)
    return (torch.cat(grad_values, 1).contiguous(),
            grad_locations.contiguous(),
            grad_weights.contiguous())


# --------------------------------------------------------------------------
# Compiled layer calls
# --------------------------------------------------------------------------
def compile_unavailable(device_type: str,
                        backend: object = 'inductor') -> Optional[str]:
    """Why ``torch.compile`` with ``backend`` cannot run on ``device_type``,
    or None where it can (as far as can be told before compiling)."""
    if not torch._dynamo.is_dynamo_supported():
        return ('torch.compile does not support this Python '
                f'({torch.__version__})')
    if backend != 'inductor':
        return None
    if device_type == 'cuda':
        from torch.utils._triton import has_triton
        if not has_triton():
            return ('Inductor needs triton for CUDA and it is not installed '
                    '(or the GPU is older than compute capability 7.0)')
    elif device_type == 'cpu':
        try:
            from torch._inductor import cpp_builder
            cpp_builder.get_cpp_compiler()
        except Exception as exc:  # the search raises when none is found
            return f'Inductor needs a C++ compiler for the CPU: {exc}'
    return None


def compile_options(option: CompileOption) -> Optional[dict]:
    """``torch.compile`` keyword arguments of a ``compile_layers`` option;
    None when it is off."""
    if option is False or option is None:
        return None
    if option is True:
        return {}
    if isinstance(option, dict):
        return dict(option)
    raise TypeError('compile_layers must be a bool or a dict of '
                    f'torch.compile arguments, got {option!r}')


#: Compiled variants allowed per layer ``forward`` (dynamo's default, 8, is
#: shared by every combination of training/eval, grad mode, autocast,
#: masks and attention configs such as 4 or 5 levels: a few models in one
#: process, as the benchmark builds them, reach it). Applied only while
#: the layers' compiled code runs (``torch._dynamo.config.patch``).
RECOMPILE_LIMIT = 64
_LIMIT_KEY = 'recompile_limit' if hasattr(torch._dynamo.config,
                                          'recompile_limit') \
    else 'cache_size_limit'

#: The compiled backward is traced outside autocast, as eager autograd runs
#: it (torch's default traces it under the forward's autocast state, which
#: recasts the backward of a region that autocast leaves in fp32, such as
#: ``fp32_projections``, to half precision). torch versions without the
#: setting (before mid-2025) always trace it under the forward's state:
#: with them that option's backward under ``compile_layers`` and AMP runs
#: in half precision (its forward stays fp32).
_BACKWARD_AUTOCAST = ({
    'backward_pass_autocast': 'off'
} if hasattr(functorch_config, 'backward_pass_autocast') else {})

#: Compiled ``forward`` functions, one per (function, options); the cache
#: of compiled graphs lives on each function's code object.
_COMPILED: Dict[tuple, Callable] = {}
#: Per (device type, backend): why compilation is unavailable there, or
#: None where it was found available; a reason is warned once.
_UNAVAILABLE: Dict[tuple, Optional[str]] = {}


def _compiled_forward(forward: Callable, options: dict) -> Callable:
    key = (forward, repr(sorted(options.items(), key=str)))
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(forward, **options)
    return _COMPILED[key]


def _mark_token_dims(kwargs: dict) -> None:
    for name, dims in _TOKEN_DIMS.items():
        tensor = kwargs.get(name)
        if isinstance(tensor, Tensor):
            for dim in dims:
                if tensor.dim() > dim and tensor.size(dim) > 1:
                    torch._dynamo.maybe_mark_dynamic(tensor, dim)


def _fall_back(key: tuple, reason: str) -> None:
    if _UNAVAILABLE.get(key) is None:
        _UNAVAILABLE[key] = reason
        warnings.warn(
            f'compile_layers: {reason}; the transformer layers run eagerly '
            '(uncompiled).',
            stacklevel=3)


def call_layer(layer: nn.Module, option: CompileOption, query: Tensor,
               **kwargs) -> Tensor:
    """``layer(query, **kwargs)``, through the compiled ``forward`` of the
    layer's class when ``option`` (``compile_layers``) is set.

    The compiled call skips ``nn.Module.__call__`` (the layers of this
    package have no hooks); a layer with forward hooks runs eagerly.
    """
    options = compile_options(option)
    if options is None:
        return layer(query, **kwargs)
    if layer._forward_hooks or layer._forward_pre_hooks:
        warnings.warn(
            f'compile_layers: {type(layer).__name__} has forward hooks, '
            'which the compiled call would skip; it runs eagerly.',
            stacklevel=2)
        return layer(query, **kwargs)
    options.setdefault('dynamic', None)
    key = (query.device.type, _backend_name(options))
    if key not in _UNAVAILABLE:
        _UNAVAILABLE[key] = None
        reason = compile_unavailable(*key)
        if reason is not None:
            _fall_back(key, reason)
    if _UNAVAILABLE[key] is not None:
        return layer(query, **kwargs)
    if options['dynamic'] is None:
        kwargs['query'] = query
        _mark_token_dims(kwargs)
        del kwargs['query']
    compiled = _compiled_forward(type(layer).forward, options)
    try:
        with torch._dynamo.config.patch({_LIMIT_KEY: RECOMPILE_LIMIT}), \
                functorch_config.patch(_BACKWARD_AUTOCAST):
            return compiled(layer, query, **kwargs)
    except torch._dynamo.exc.BackendCompilerFailed as exc:
        cause = getattr(exc, 'inner_exception', None) or exc
        _fall_back(
            key, f'the {_backend_name(options)} backend failed to compile '
            f'the layer ({type(cause).__name__}: {str(cause)[:300]})')
        return layer(query, **kwargs)


def _backend_name(options: dict) -> str:
    backend = options.get('backend', 'inductor')
    return backend if isinstance(backend, str) else getattr(
        backend, '__name__', type(backend).__name__)


class CompiledLayersMixin:
    """The ``compile_layers`` option of an encoder or decoder whose forward
    calls its layers through :meth:`layer_runner`.

    Args:
        compile_layers (bool | dict): Run each layer through
            ``torch.compile`` (see the module docstring); a dict gives
            ``torch.compile``'s keyword arguments. Defaults to False: the
            layers are called as they are.
    """

    def __init__(self,
                 *args,
                 compile_layers: CompileOption = False,
                 **kwargs) -> None:
        compile_options(compile_layers)  # type check
        self.compile_layers = compile_layers
        super().__init__(*args, **kwargs)

    def layer_runner(self, layer: nn.Module) -> Callable:
        """What to call instead of ``layer``: ``layer`` itself when
        ``compile_layers`` is off, else its compiled call."""
        if compile_options(self.compile_layers) is None:
            return layer
        return functools.partial(call_layer, layer, self.compile_layers)
