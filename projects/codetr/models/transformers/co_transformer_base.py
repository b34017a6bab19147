"""What the Co-DETR transformers share: encoder side and decoder call.

mmdet 3.x implements the Deformable DETR transformer stages
(``pre_transformer -> forward_encoder -> pre_decoder -> forward_decoder``) as
methods of its ``DeformableDETR`` detector. Co-DETR needs the transformer as
a module of its own (the query head owns it, and the auxiliary decoding
reuses it), so :class:`CoTransformerBase` hosts the same parameters under the
same names and reuses mmdet's stage functions unchanged. Subclasses add the
query selection (``pre_decoder``), their decoder and the customised positive
queries of their family (``aux_query_set``, decoded by
:class:`~.aux_query_decoding.AuxQueryDecoding`).
"""
from typing import Dict, List, Optional, Sequence, Tuple, Type

import torch
import torch.nn.functional as F
from mmcv.ops import MultiScaleDeformableAttention
from mmdet.models.detectors.deformable_detr import DeformableDETR
from mmdet.structures import SampleList
from mmdet.utils import ConfigType, OptMultiConfig
from mmengine.model import BaseModule
from torch import Tensor, nn

from ..device_copies import host_to_device
from ..precision.dtypes import compute_dtype
from ..task_modules.level_shapes import host_level_sizes, level_shape_tensors
from .aux_query_decoding import AuxQueryDecoding
from .co_deformable_detr_layers import CoDeformableDetrTransformerEncoder
from .sine_encoding import CoSinePositionalEncoding, proposal_pos_embed


class CoTransformerBase(AuxQueryDecoding, BaseModule):
    """Positional encoding, deformable encoder, two-stage proposals and the
    decoder of a Co-DETR query head; the positive queries' decoding comes
    from :class:`AuxQueryDecoding`.

    Parameter names follow mmdet's ``DeformableDETR`` (``level_embed``,
    ``memory_trans_fc``, ...), so its stage functions can be reused.

    Args:
        encoder (dict): Config of ``CoDeformableDetrTransformerEncoder``.
        decoder (dict): Config of the subclass's ``decoder_type``.
        positional_encoding (dict): Config of ``SinePositionalEncoding``.
            Injected by the query head.
        num_queries (int): Queries selected from the encoder. Injected by the
            query head.
        num_feature_levels (int): Encoder levels. Defaults to 4.
        num_co_heads (int): Number of auxiliary heads that supply positive
            coordinates; injected by the detector. Defaults to 0.
        init_cfg (dict, optional): Initialisation config.
    """

    #: Decoder class, built from the ``decoder`` config.
    decoder_type: Type[nn.Module]
    #: Queries selected from the encoder's proposals (two-stage; scored by
    #: the head's extra branch) rather than learnt. Read by the query head,
    #: which adds the proposal branch and the encoder loss, and by mmdet's
    #: reused stages.
    as_two_stage: bool = True

    # Reused verbatim from mmdet's Deformable DETR: it only runs
    # ``encoder``, which this module owns.
    forward_encoder = DeformableDETR.forward_encoder
    # mmdet's, with the frequencies in the proposals' dtype (float64 too)
    get_proposal_pos_embed = staticmethod(proposal_pos_embed)

    def __init__(self,
                 encoder: ConfigType,
                 decoder: ConfigType,
                 positional_encoding: ConfigType,
                 num_queries: int = 300,
                 num_feature_levels: int = 4,
                 num_co_heads: int = 0,
                 init_cfg: OptMultiConfig = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.num_queries = num_queries
        self.num_feature_levels = num_feature_levels
        self.num_co_heads = num_co_heads

        self.positional_encoding = CoSinePositionalEncoding(
            **positional_encoding)
        self.encoder = CoDeformableDetrTransformerEncoder(**encoder)
        self.decoder = self.decoder_type(**decoder)
        self.embed_dims = dims = self.encoder.embed_dims
        if self.positional_encoding.num_feats * 2 != dims:
            raise ValueError('positional_encoding.num_feats must be half of '
                             f'embed_dims ({dims}), got '
                             f'{self.positional_encoding.num_feats}')
        # zeros until init_weights draws it (or a checkpoint sets it): a
        # model built without either, as mmdet's init_detector and
        # DetInferencer build one without weights, holds no garbage memory,
        # and no random number is drawn here, so seeded builds are unchanged
        self.level_embed = nn.Parameter(torch.zeros(num_feature_levels, dims))
        if self.as_two_stage:  # the encoder proposals' projection
            self.memory_trans_fc = nn.Linear(dims, dims)
            self.memory_trans_norm = nn.LayerNorm(dims)

    @property
    def ref_eps(self) -> float:
        """``eps`` of the inverse sigmoid applied to a reference box
        before a regression offset is added: the decoder's (1e-5, mmdet's,
        where it sets none; DAB-DETR's 1e-3). The query head uses it too."""
        return getattr(self.decoder, 'ref_eps', 1e-5)

    def init_weights(self) -> None:
        """Xavier on every matrix, then MSDeformAttn's init, then level
        embeddings N(0, 1) (docs/design.md, released code)."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MultiScaleDeformableAttention):
                m.init_weights()
        nn.init.normal_(self.level_embed)

    def pre_transformer(self, mlvl_feats: Tuple[Tensor, ...],
                        batch_data_samples: SampleList) -> Tuple[Dict, Dict]:
        """mmdet's ``DeformableDETR.pre_transformer``, the same values.

        Padding masks, positional and level embeddings and the flattened
        features as mmdet computes them; ``spatial_shapes`` and
        ``level_start_index`` come from :func:`level_shape_tensors` (sizes
        read from the feature shapes, no host-device copy per level), so
        the forward can run inside a CUDA graph. While tracing (ONNX
        export) mmdet's own method runs: its sizes stay dynamic.

        Args:
            mlvl_feats (tuple[Tensor]): Neck outputs, each (bs, dim, h, w).
            batch_data_samples (list[DetDataSample]): ``batch_input_shape``
                and ``img_shape`` give the padding masks.

        Returns:
            tuple[dict, dict]: The encoder inputs (``feat``, ``feat_mask``,
            ``feat_pos``, ``spatial_shapes``, ``level_start_index``,
            ``valid_ratios``) and the decoder inputs (the same but ``feat``
            and ``feat_pos``, ``feat_mask`` as ``memory_mask``).
        """
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return DeformableDETR.pre_transformer(self, mlvl_feats,
                                                  batch_data_samples)
        masks = self.level_masks(mlvl_feats, batch_data_samples)
        feat, feat_pos, memory_mask = self.flatten_levels(mlvl_feats, masks)
        spatial_shapes, level_start_index = level_shape_tensors(
            [f.shape[-2:] for f in mlvl_feats], mlvl_feats[0].device)
        if memory_mask is None:
            valid_ratios = feat.new_ones(feat.size(0), len(mlvl_feats), 2)
        else:
            dtype = compute_dtype(feat.dtype)
            valid_ratios = torch.stack(
                [self.get_valid_ratio(m, dtype) for m in masks], 1)
        return self.stage_inputs(feat, feat_pos, memory_mask, spatial_shapes,
                                 level_start_index, valid_ratios)

    def flatten_levels(
        self, mlvl_feats: Sequence[Tensor],
        masks: Sequence[Optional[Tensor]]
    ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """The levels flattened and concatenated, as mmdet's
        ``pre_transformer`` does.

        Args:
            mlvl_feats (Sequence[Tensor]): Each (bs, dim, h_l, w_l).
            masks (Sequence[Tensor | None]): Each (bs, h_l, w_l) bool, True
                on padding, or all None (no padding).

        Returns:
            tuple: Features (bs, sum(h_l * w_l), dim), their sine position
            plus level embeddings (same shape), and the padding mask
            (bs, sum(h_l * w_l)) or None.
        """
        feats, pos_embeds, flat_masks = [], [], []
        for lvl, (feat, mask) in enumerate(zip(mlvl_feats, masks)):
            pos = self.positional_encoding(mask, input=feat)
            feats.append(feat.flatten(2).transpose(1, 2))
            pos_embeds.append(
                pos.flatten(2).transpose(1, 2) +
                self.level_embed[lvl].view(1, 1, -1))
            flat_masks.append(None if mask is None else mask.flatten(1))
        memory_mask = None if flat_masks[0] is None else torch.cat(
            flat_masks, 1)
        return torch.cat(feats, 1), torch.cat(pos_embeds, 1), memory_mask

    @staticmethod
    def stage_inputs(feat: Tensor, feat_pos: Tensor,
                     memory_mask: Optional[Tensor], spatial_shapes: Tensor,
                     level_start_index: Tensor,
                     valid_ratios: Tensor) -> Tuple[Dict, Dict]:
        """The encoder's keyword arguments and the decoder inputs, in the
        layout of mmdet's ``pre_transformer``."""
        levels = dict(
            spatial_shapes=spatial_shapes,
            level_start_index=level_start_index,
            valid_ratios=valid_ratios)
        encoder_inputs = dict(
            feat=feat, feat_mask=memory_mask, feat_pos=feat_pos, **levels)
        return encoder_inputs, dict(memory_mask=memory_mask, **levels)

    @staticmethod
    def level_masks(mlvl_feats: Tuple[Tensor, ...],
                    batch_data_samples: SampleList) -> List[Optional[Tensor]]:
        """Padding masks per level, True on padding; Nones when no image
        of the batch is padded (mmdet's rule, so its positional encoding of
        an unpadded batch is reproduced).

        Args:
            mlvl_feats (tuple[Tensor]): Neck outputs, each (bs, dim, h, w),
                for the levels' sizes.
            batch_data_samples (list[DetDataSample]): ``batch_input_shape``
                and each image's ``img_shape`` (h, w).

        Returns:
            list[Tensor | None]: Per level (bs, h_l, w_l) bool, or None.
        """
        input_h, input_w = batch_data_samples[0].batch_input_shape
        img_shapes = [s.img_shape for s in batch_data_samples]
        if all(h == input_h and w == input_w for h, w in img_shapes):
            return [None] * len(mlvl_feats)
        masks = mlvl_feats[0].new_ones((len(img_shapes), input_h, input_w))
        for i, (h, w) in enumerate(img_shapes):
            masks[i, :h, :w] = 0
        return [
            F.interpolate(masks[None], size=feat.shape[-2:]).to(
                torch.bool).squeeze(0) for feat in mlvl_feats
        ]

    @staticmethod
    def get_valid_ratio(mask: Tensor,
                        dtype: torch.dtype = torch.float32) -> Tensor:
        """mmdet's ``DeformableDETR.get_valid_ratio`` in ``dtype`` (mmdet:
        float32).

        Args:
            mask (Tensor): (bs, h, w) bool, True on padding.
            dtype (torch.dtype): Dtype of the ratios.

        Returns:
            Tensor: (bs, 2) valid width and height over w and h.
        """
        _, height, width = mask.shape
        valid_h = torch.sum(~mask[:, :, 0], 1)
        valid_w = torch.sum(~mask[:, 0, :], 1)
        return torch.stack(
            [valid_w.to(dtype) / width,
             valid_h.to(dtype) / height], -1)

    def gen_encoder_output_proposals(
            self, memory: Tensor, memory_mask: Optional[Tensor],
            spatial_shapes: Tensor) -> Tuple[Tensor, Tensor]:
        """mmdet's two-stage proposals, the same values in float32, with
        the level sizes read back once (:func:`host_level_sizes`) instead of
        twice per level and the grid in the memory's dtype (mmdet: float32,
        which a float64 model would divide in float32). While tracing (ONNX
        export) mmdet's own method runs: its sizes stay dynamic.

        Without padding mask mmdet copies each level's (h, w) to the device,
        which a CUDA graph capture forbids; while capturing, an all-valid
        mask is passed instead: its valid heights and widths are the same
        h and w, so the proposals and memory are the same values.

        Args:
            memory (Tensor): Encoder output, (bs, num_feat_points, dim).
            memory_mask (Tensor, optional): (bs, num_feat_points), True on
                padding.
            spatial_shapes (Tensor): (num_levels, 2) as (h, w).

        Returns:
            tuple[Tensor, Tensor]: The transformed memory (bs,
            num_feat_points, dim) and the proposals (bs, num_feat_points, 4)
            as inverse-sigmoid (cx, cy, w, h), inf where invalid.
        """
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            # dynamic level sizes in the exported graph (float32 only)
            return DeformableDETR.gen_encoder_output_proposals(
                self, memory, memory_mask, spatial_shapes)
        if memory_mask is None and memory.is_cuda and \
                torch.cuda.is_current_stream_capturing():
            memory_mask = memory.new_zeros(memory.shape[:2], dtype=torch.bool)
        bs = memory.size(0)
        dtype = compute_dtype(memory.dtype)
        proposals = []
        start = 0
        for lvl, (height, width) in enumerate(
                host_level_sizes(spatial_shapes)):
            if memory_mask is not None:
                mask = memory_mask[:, start:start + height * width].view(
                    bs, height, width, 1)
                valid_h = torch.sum(~mask[:, :, 0, 0], 1).unsqueeze(-1)
                valid_w = torch.sum(~mask[:, 0, :, 0], 1).unsqueeze(-1)
                scale = torch.cat([valid_w, valid_h], 1).view(bs, 1, 1, 2)
            else:
                scale = host_to_device([width, height],
                                       memory).view(1, 1, 1, 2)
            grid_y, grid_x = torch.meshgrid(
                torch.linspace(
                    0, height - 1, height, dtype=dtype, device=memory.device),
                torch.linspace(
                    0, width - 1, width, dtype=dtype, device=memory.device),
                indexing='ij')
            grid = torch.cat([grid_x.unsqueeze(-1), grid_y.unsqueeze(-1)], -1)
            grid = (grid.unsqueeze(0).expand(bs, -1, -1, -1) + 0.5) / scale
            wh = torch.ones_like(grid) * 0.05 * (2.0**lvl)
            proposals.append(torch.cat((grid, wh), -1).view(bs, -1, 4))
            start += height * width
        output_proposals = torch.cat(proposals, 1)
        # a sum, not ``all``, as mmdet (exportable to ONNX)
        output_proposals_valid = (
            (output_proposals > 0.01) & (output_proposals < 0.99)).sum(
                -1, keepdim=True) == output_proposals.shape[-1]
        output_proposals = torch.log(output_proposals / (1 - output_proposals))
        output_memory = memory
        if memory_mask is not None:
            output_proposals = output_proposals.masked_fill(
                memory_mask.unsqueeze(-1), float('inf'))
            output_memory = output_memory.masked_fill(
                memory_mask.unsqueeze(-1), float(0))
        output_proposals = output_proposals.masked_fill(
            ~output_proposals_valid, float('inf'))
        output_memory = output_memory.masked_fill(~output_proposals_valid,
                                                  float(0))
        output_memory = self.memory_trans_norm(
            self.memory_trans_fc(output_memory))
        return output_memory, output_proposals

    def check_num_tokens(self, memory: Tensor) -> None:
        """Raise if the encoder gives fewer tokens than queries to select."""
        if memory.size(1) < self.num_queries:
            raise ValueError(
                f'{self.num_queries} queries are selected from the encoder '
                f'but the image gives only {memory.size(1)} feature points; '
                'use larger images or fewer queries (num_query).')

    def forward_decoder(self, query: Tensor, reference_points: Tensor,
                        memory: Tensor, memory_mask: Optional[Tensor],
                        spatial_shapes: Tensor, level_start_index: Tensor,
                        valid_ratios: Tensor, reg_branches: nn.ModuleList,
                        **kwargs) -> Tuple[Tensor, list]:
        """Decode with box refinement.

        Args:
            query (Tensor): Content queries, (bs, num_queries, dim).
            reference_points (Tensor): Initial boxes, normalised
                (cx, cy, w, h), (bs, num_queries, 4).
            memory (Tensor): Encoder output, (bs, num_feat_points, dim).
            memory_mask (Tensor, optional): (bs, num_feat_points), True on
                padding.
            spatial_shapes, level_start_index, valid_ratios (Tensor): The
                memory's layout, as :meth:`pre_transformer` gives it.
            reg_branches (nn.ModuleList): Per-layer regression branches.
            **kwargs: Passed to the decoder (``query_pos``,
                ``self_attn_mask``).

        Returns:
            tuple[Tensor, list[Tensor]]: Hidden states (num_layers, bs,
            num_queries, dim) and ``[initial reference, *per-layer
            references]``, each (bs, num_queries, 4) normalised
            (cx, cy, w, h): the layout of mmdet's
            ``DeformableDETRHead.forward``.
        """
        hidden_states, inter_refs = self.decoder(
            query=query,
            value=memory,
            key_padding_mask=memory_mask,
            reference_points=reference_points,
            spatial_shapes=spatial_shapes,
            level_start_index=level_start_index,
            valid_ratios=valid_ratios,
            reg_branches=reg_branches,
            **kwargs)
        return hidden_states, [reference_points, *inter_refs]
