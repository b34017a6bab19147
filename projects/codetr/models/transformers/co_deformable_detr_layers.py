"""Deformable DETR layers as Co-DETR uses them.

Subclasses of mmdet's Deformable DETR encoder/decoder and of mmcv's
``MultiScaleDeformableAttention``; each states what it changes and why:

- :class:`CoMultiScaleDeformableAttention`: the sampling core runs in fp32
  under autocast (with ``fp32_projections`` the whole module), and the
  forward has no host-device synchronisation;
- :class:`CoDeformableDetrTransformerEncoder`: gradient checkpointing of the
  first ``num_cp`` layers with ``torch.utils.checkpoint`` (no fairscale);
- :class:`CoDeformableDetrTransformerDecoder`: look-forward-twice.

The encoder and the decoders take ``compile_layers`` (default off): their
layers then run through ``torch.compile`` (:mod:`.compiled_layers`).
"""
from typing import Optional, Tuple

import torch
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks.transformer import FFN, MultiheadAttention
from mmcv.ops.multi_scale_deform_attn import (
    MultiScaleDeformableAttention, MultiScaleDeformableAttnFunction,
    multi_scale_deformable_attn_pytorch)
from mmdet.models.layers import (DeformableDetrTransformerDecoder,
                                 DeformableDetrTransformerDecoderLayer,
                                 DeformableDetrTransformerEncoder,
                                 DeformableDetrTransformerEncoderLayer,
                                 inverse_sigmoid)
from mmengine.model import ModuleList
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..precision.dtypes import at_least_float32
from ..task_modules.level_shapes import host_level_sizes
from .compiled_layers import CompiledLayersMixin, ms_deform_attn


class CoMultiScaleDeformableAttention(MultiScaleDeformableAttention):
    """mmcv's multi-scale deformable attention with two changes.

    1. Under autocast the bilinear sampling and weighting (mmcv's CUDA op or
       its PyTorch path) run in fp32 (a float64 model keeps float64). mmcv's
       op has no bf16 kernel, and in fp16 its sampling locations lose
       precision and its backward accumulates in half precision. The
       projections around it still run in the autocast dtype.
    2. mmcv asserts ``sum(h * w) == num_value`` with a tensor comparison,
       which blocks the host until the GPU catches up, in every layer. The
       shapes come from the same feature maps, so the check is dropped.

    While ``torch.compile`` traces it (``compile_layers``), the sampling is
    the operator :func:`~.compiled_layers.ms_deform_attn` (the same mmcv
    computation, opaque to the compiler); otherwise mmcv is called directly.

    Under autocast the projections' inputs, weights and outputs cross
    between the autocast dtype and the fp32 sampling: 15 cast kernels per
    module forward and 16 backward, in a training step whose pace the
    host sets (docs/performance.md). ``fp32_projections`` runs the whole
    module in fp32 (at least) under autocast instead: each distinct input
    in a lower precision is cast once, the projections are fp32 matrix
    products, and its output is the module's fp32 output for those
    inputs.

    Args:
        fp32_projections (bool): Under autocast, run the value, offset,
            weight and output projections in fp32 too. No effect without
            autocast, or for a module whose weights are float16 or
            bfloat16. Defaults to False (the projections in the autocast
            dtype, as mmcv's module).
        *args, **kwargs: mmcv's arguments; ``batch_first=True`` only.
    """

    def __init__(self, *args, fp32_projections: bool = False,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fp32_projections = fp32_projections

    def forward(self,
                query: Tensor,
                key: Optional[Tensor] = None,
                value: Optional[Tensor] = None,
                identity: Optional[Tensor] = None,
                query_pos: Optional[Tensor] = None,
                key_padding_mask: Optional[Tensor] = None,
                reference_points: Optional[Tensor] = None,
                spatial_shapes: Optional[Tensor] = None,
                level_start_index: Optional[Tensor] = None,
                **kwargs) -> Tensor:
        """Deformable attention of ``query`` (bs, num_query, dims) over
        ``value`` (bs, num_value, dims) around ``reference_points``
        (bs, num_query, num_levels, 2 or 4), normalised to [0, 1]."""
        if self._runs_in_fp32(query):
            # mmdet's encoder passes the same tensor as query, key and
            # value: cast it once; mmcv never reads ``key``
            query32 = at_least_float32(query)
            value, identity, query_pos = (
                None if t is None else query32 if t is query else
                at_least_float32(t) for t in (value, identity, query_pos))
            with torch.autocast(device_type=query.device.type,
                                enabled=False):
                return self._attend(query32, key, value, identity,
                                    query_pos, key_padding_mask,
                                    reference_points, spatial_shapes,
                                    level_start_index)
        return self._attend(query, key, value, identity, query_pos,
                            key_padding_mask, reference_points,
                            spatial_shapes, level_start_index)

    def _runs_in_fp32(self, query: Tensor) -> bool:
        """Whether ``fp32_projections`` applies: autocast is on for the
        query's device and the module's weights are float32 or float64 (a
        half-precision module keeps mmcv's path)."""
        device_type = query.device.type
        return (self.fp32_projections
                and torch.amp.is_autocast_available(device_type)
                and torch.is_autocast_enabled(device_type)
                and self.value_proj.weight.dtype in (torch.float32,
                                                     torch.float64))

    def extra_repr(self) -> str:
        """The option, where the model is printed."""
        return f'fp32_projections={self.fp32_projections}'

    def _attend(self, query: Tensor, key: Optional[Tensor],
                value: Optional[Tensor], identity: Optional[Tensor],
                query_pos: Optional[Tensor],
                key_padding_mask: Optional[Tensor],
                reference_points: Optional[Tensor],
                spatial_shapes: Optional[Tensor],
                level_start_index: Optional[Tensor]) -> Tensor:
        """:meth:`forward` in the current autocast state."""
        if not self.batch_first:
            raise ValueError('CoMultiScaleDeformableAttention needs '
                             'batch_first=True')
        value = query if value is None else value
        identity = query if identity is None else identity
        if query_pos is not None:
            query = query + query_pos
        bs, num_query, _ = query.shape
        num_value = value.shape[1]

        value = self.value_proj(value)
        if key_padding_mask is not None:
            value = value.masked_fill(key_padding_mask[..., None], 0.0)
        value = value.view(bs, num_value, self.num_heads, -1)
        sampling_offsets = self.sampling_offsets(query).view(
            bs, num_query, self.num_heads, self.num_levels, self.num_points, 2)
        attention_weights = self.attention_weights(query).view(
            bs, num_query, self.num_heads, self.num_levels * self.num_points)

        with torch.autocast(device_type=value.device.type, enabled=False):
            attention_weights = at_least_float32(attention_weights)
            attention_weights = attention_weights.softmax(-1).view(
                bs, num_query, self.num_heads, self.num_levels,
                self.num_points)
            sampling_offsets = at_least_float32(sampling_offsets)
            reference_points = at_least_float32(reference_points)
            if reference_points.shape[-1] == 2:
                offset_normalizer = torch.stack(
                    [spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
                sampling_locations = reference_points[:, :, None, :, None] \
                    + sampling_offsets \
                    / offset_normalizer[None, None, None, :, None, :]
            elif reference_points.shape[-1] == 4:
                sampling_locations = \
                    reference_points[:, :, None, :, None, :2] \
                    + sampling_offsets / self.num_points \
                    * reference_points[:, :, None, :, None, 2:] * 0.5
            else:
                raise ValueError('reference_points must end in 2 or 4, got '
                                 f'{tuple(reference_points.shape)}')
            value = at_least_float32(value)
            if torch.compiler.is_compiling():
                output = ms_deform_attn(value, spatial_shapes,
                                        level_start_index, sampling_locations,
                                        attention_weights, self.im2col_step)
            elif value.is_cuda:
                output = MultiScaleDeformableAttnFunction.apply(
                    value, spatial_shapes, level_start_index,
                    sampling_locations, attention_weights, self.im2col_step)
            else:
                output = multi_scale_deformable_attn_pytorch(
                    value, spatial_shapes, sampling_locations,
                    attention_weights)
        output = self.output_proj(output)
        return self.dropout(output) + identity


class CoDeformableDetrTransformerEncoderLayer(
        DeformableDetrTransformerEncoderLayer):
    """Encoder layer whose self-attention is
    :class:`CoMultiScaleDeformableAttention`."""

    def _init_layers(self) -> None:
        self.self_attn = CoMultiScaleDeformableAttention(**self.self_attn_cfg)
        self.embed_dims = self.self_attn.embed_dims
        self.ffn = FFN(**self.ffn_cfg)
        self.norms = ModuleList(
            build_norm_layer(self.norm_cfg, self.embed_dims)[1]
            for _ in range(2))


class CoDeformableDetrTransformerDecoderLayer(
        DeformableDetrTransformerDecoderLayer):
    """Decoder layer whose cross-attention is
    :class:`CoMultiScaleDeformableAttention`."""

    def _init_layers(self) -> None:
        self.self_attn = MultiheadAttention(**self.self_attn_cfg)
        self.cross_attn = CoMultiScaleDeformableAttention(
            **self.cross_attn_cfg)
        self.embed_dims = self.self_attn.embed_dims
        self.ffn = FFN(**self.ffn_cfg)
        self.norms = ModuleList(
            build_norm_layer(self.norm_cfg, self.embed_dims)[1]
            for _ in range(3))


class CoDeformableDetrTransformerEncoder(CompiledLayersMixin,
                                         DeformableDetrTransformerEncoder):
    """Deformable DETR encoder with ``torch.utils.checkpoint``.

    ``num_cp`` (mmdet's argument) layers, counted from the first, recompute
    their activations in the backward pass instead of storing them. mmdet
    wraps them with fairscale, an extra dependency that broke under DDP
    (field notes, SX#62); the non-reentrant ``torch.utils.checkpoint`` needs
    nothing extra and works with DDP.

    Args:
        compile_layers (bool | dict): Run the layers through
            ``torch.compile`` (:mod:`.compiled_layers`; checkpointed layers
            too). Defaults to False.
        Others: mmdet's.
    """

    def _init_layers(self) -> None:
        self.layers = ModuleList(
            CoDeformableDetrTransformerEncoderLayer(**self.layer_cfg)
            for _ in range(self.num_layers))
        self.num_cp = max(self.num_cp, 0)  # mmdet's default -1 means none
        if self.num_cp > self.num_layers:
            raise ValueError(f'num_cp must be at most {self.num_layers} (the '
                             f'encoder layers), got {self.num_cp}')
        self.embed_dims = self.layers[0].embed_dims

    def forward(self, query: Tensor, query_pos: Tensor,
                key_padding_mask: Optional[Tensor], spatial_shapes: Tensor,
                level_start_index: Tensor, valid_ratios: Tensor,
                **kwargs) -> Tensor:
        """Encode flattened features (bs, num_feat_points, dims)."""
        reference_points = self.get_encoder_reference_points(
            host_level_sizes(spatial_shapes), valid_ratios,
            device=query.device)
        inputs = dict(
            query_pos=query_pos,
            key_padding_mask=key_padding_mask,
            spatial_shapes=spatial_shapes,
            level_start_index=level_start_index,
            valid_ratios=valid_ratios,
            reference_points=reference_points,
            **kwargs)
        for i, layer in enumerate(self.layers):
            run = self.layer_runner(layer)
            if i < self.num_cp and self.training and torch.is_grad_enabled():
                query = checkpoint(run, query, use_reentrant=False, **inputs)
            else:
                query = run(query, **inputs)
        return query


def co_decoder_layers(decoder: nn.Module, no_post_norm: str) -> ModuleList:
    """The ``decoder.num_layers`` layers of an mmdet decoder, each a
    :class:`CoDeformableDetrTransformerDecoderLayer` of
    ``decoder.layer_cfg``; raises ``no_post_norm`` if the decoder has a
    post norm."""
    if decoder.post_norm_cfg is not None:
        raise ValueError(f'{no_post_norm}: set decoder.post_norm_cfg=None')
    return ModuleList(
        CoDeformableDetrTransformerDecoderLayer(**decoder.layer_cfg)
        for _ in range(decoder.num_layers))


class CoDeformableDetrTransformerDecoder(CompiledLayersMixin,
                                         DeformableDetrTransformerDecoder):
    """Deformable DETR decoder with look-forward-twice (docs/design.md, query
    selection).

    mmdet's decoder returns the detached refined boxes. With
    ``look_forward_twice=True`` the returned reference of layer ``l`` is the
    refined box *before* detaching, so the box loss of layer ``l + 1`` (which
    refines that reference) also trains layer ``l``. The reference fed to the
    next layer's sampling stays detached, as in Deformable DETR.

    Subclasses change how each layer's positional queries are made
    (:meth:`layer_query_pos`) and the refinement's ``ref_eps``.

    Args:
        look_forward_twice (bool): Return non-detached references.
            Defaults to True.
        compile_layers (bool | dict): Run the layers through
            ``torch.compile`` (:mod:`.compiled_layers`). Defaults to False.
        Others: mmdet's.
    """

    #: ``eps`` of the inverse sigmoid in the box refinement (mmdet's).
    ref_eps: float = 1e-5

    def __init__(self,
                 *args,
                 look_forward_twice: bool = True,
                 **kwargs) -> None:
        self.look_forward_twice = look_forward_twice
        super().__init__(*args, **kwargs)

    def _init_layers(self) -> None:
        self.layers = co_decoder_layers(
            self, 'Deformable DETR decoders have no post norm')
        self.embed_dims = self.layers[0].embed_dims

    def layer_query_pos(self, query_pos: Optional[Tensor], anchors: Tensor,
                        content: Tensor, layer_id: int) -> Tensor:
        """The positional queries of one layer: the given ones, unchanged.

        Args:
            query_pos (Tensor, optional): The decoder's ``query_pos``,
                (bs, num_queries, dim).
            anchors (Tensor): The layer's reference boxes times the valid
                ratios, (bs, num_queries, num_levels, 4).
            content (Tensor): Content queries entering the layer,
                (bs, num_queries, dim).
            layer_id (int): Index of the layer.

        Returns:
            Tensor: (bs, num_queries, dim).
        """
        return query_pos

    def forward(self,
                query: Tensor,
                value: Tensor,
                key_padding_mask: Optional[Tensor],
                reference_points: Tensor,
                spatial_shapes: Tensor,
                level_start_index: Tensor,
                valid_ratios: Tensor,
                reg_branches: Optional[nn.ModuleList] = None,
                query_pos: Optional[Tensor] = None,
                **kwargs) -> Tuple[Tensor, Tensor]:
        """Run all layers with box refinement.

        Args:
            query (Tensor): Content queries, (bs, num_queries, dim).
            value (Tensor): Encoder memory, (bs, num_value, dim).
            key_padding_mask (Tensor, optional): Padding mask of the memory,
                (bs, num_value), True on padding.
            reference_points (Tensor): Initial boxes, normalised
                (cx, cy, w, h), (bs, num_queries, 4).
            spatial_shapes (Tensor): (num_levels, 2) as (h, w).
            level_start_index (Tensor): (num_levels, ).
            valid_ratios (Tensor): (bs, num_levels, 2).
            reg_branches (nn.ModuleList, optional): Per-layer regression
                branches used for refinement; no refinement when None.
            query_pos (Tensor, optional): Positional queries, (bs,
                num_queries, dim), as :meth:`layer_query_pos` uses them.
            **kwargs: Passed to every layer (e.g. ``self_attn_mask``).

        Returns:
            tuple[Tensor, Tensor]: Hidden states of every layer,
            (num_layers, bs, num_queries, dim), and the reference boxes
            returned for each layer's prediction, (num_layers, bs,
            num_queries, 4), normalised (cx, cy, w, h).
        """
        if reference_points.shape[-1] != 4:
            raise ValueError(f'{type(self).__name__} decodes 4-d reference '
                             'boxes; got reference points of shape '
                             f'{tuple(reference_points.shape)}')
        output = query
        intermediate, intermediate_refs = [], []
        scale = torch.cat([valid_ratios, valid_ratios], -1)[:, None]
        for layer_id, layer in enumerate(self.layers):
            anchors = reference_points[:, :, None] * scale
            output = self.layer_runner(layer)(
                output,
                query_pos=self.layer_query_pos(query_pos, anchors, output,
                                               layer_id),
                value=value,
                key_padding_mask=key_padding_mask,
                spatial_shapes=spatial_shapes,
                level_start_index=level_start_index,
                valid_ratios=valid_ratios,
                reference_points=anchors,
                **kwargs)
            returned_ref = reference_points
            if reg_branches is not None:
                new_ref = (reg_branches[layer_id](output) + inverse_sigmoid(
                    reference_points, eps=self.ref_eps)).sigmoid()
                reference_points = new_ref.detach()
                returned_ref = new_ref if self.look_forward_twice \
                    else reference_points
            intermediate.append(output)
            intermediate_refs.append(returned_ref)
        return torch.stack(intermediate), torch.stack(intermediate_refs)
