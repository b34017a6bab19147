"""The Co-Deformable-DETR transformer.

Built on :class:`~.co_transformer_base.CoTransformerBase` (encoder side,
mmdet's Deformable DETR stages). What Co-Deformable-DETR adds:

- ``pre_decoder``: mixed selection (docs/design.md, query selection);
- the decoder returns non-detached references (look-forward-twice,
  docs/design.md, query selection)
  and the layers use fp32 deformable sampling under autocast
  (``co_deformable_detr_layers``);
- ``forward_aux``: decoding of customised positive queries
  (docs/design.md, positive queries).
"""
from typing import Dict, Optional, Sequence, Tuple

import torch
from mmdet.models.layers import inverse_sigmoid
from mmdet.registry import MODELS
from mmdet.utils import ConfigType, OptMultiConfig
from torch import Tensor, nn

from .co_deformable_detr_layers import CoDeformableDetrTransformerDecoder
from .co_transformer_base import CoTransformerBase


@MODELS.register_module()
class CoDeformableDetrTransformer(CoTransformerBase):
    """Encoder, two-stage proposals, mixed selection and decoder.

    Args:
        encoder (dict): Config of ``DeformableDetrTransformerEncoder``.
        decoder (dict): Config of :class:`CoDeformableDetrTransformerDecoder`
            (``num_layers``, ``layer_cfg``, ``look_forward_twice``).
        positional_encoding (dict): Config of ``SinePositionalEncoding``.
            Injected by the query head.
        num_queries (int): Queries selected from the encoder. Injected by the
            query head.
        num_feature_levels (int): Encoder levels. Defaults to 4.
        mixed_selection (bool): Content queries from a learnt embedding
            instead of the proposals (docs/design.md, query selection).
            Defaults to True.
        num_co_heads (int): Number of auxiliary heads that supply positive
            coordinates; injected by the detector. Defaults to 0.
        head_pos_embed (str): ``'scalar'`` reproduces the released code: one
            learnt scalar per auxiliary head added to all channels of the
            positional query (docs/design.md, positive queries). ``'vector'``:
            one learnt
            ``embed_dims`` vector per head (the intended design).
        init_cfg (dict, optional): Initialisation config.
    """

    decoder_type = CoDeformableDetrTransformerDecoder

    def __init__(self,
                 encoder: ConfigType,
                 decoder: ConfigType,
                 positional_encoding: ConfigType,
                 num_queries: int = 300,
                 num_feature_levels: int = 4,
                 mixed_selection: bool = True,
                 num_co_heads: int = 0,
                 head_pos_embed: str = 'scalar',
                 init_cfg: OptMultiConfig = None) -> None:
        if head_pos_embed not in ('scalar', 'vector'):
            raise ValueError("head_pos_embed must be 'scalar' (released "
                             "behaviour) or 'vector', got "
                             f'{head_pos_embed!r}')
        super().__init__(
            encoder,
            decoder,
            positional_encoding,
            num_queries=num_queries,
            num_feature_levels=num_feature_levels,
            num_co_heads=num_co_heads,
            init_cfg=init_cfg)
        self.mixed_selection = mixed_selection
        dims = self.embed_dims
        self.pos_trans_fc = nn.Linear(dims * 2, dims * 2)
        self.pos_trans_norm = nn.LayerNorm(dims * 2)

        # Customised positive queries, one set of projections per head.
        self.aux_pos_trans = nn.ModuleList(
            nn.Linear(dims * 2, dims * 2) for _ in range(num_co_heads))
        self.aux_pos_trans_norm = nn.ModuleList(
            nn.LayerNorm(dims * 2) for _ in range(num_co_heads))
        self.pos_feats_trans = nn.ModuleList(
            nn.Linear(dims, dims) for _ in range(num_co_heads))
        self.pos_feats_norm = nn.ModuleList(
            nn.LayerNorm(dims) for _ in range(num_co_heads))
        if num_co_heads > 0:
            self.head_pos_embed = nn.Embedding(
                num_co_heads, 1 if head_pos_embed == 'scalar' else dims)

    def pre_decoder(self, memory: Tensor, memory_mask: Optional[Tensor],
                    spatial_shapes: Tensor, cls_branches: nn.ModuleList,
                    reg_branches: nn.ModuleList,
                    query_embed: Tensor) -> Tuple[Dict, Dict]:
        """Two-stage proposals and mixed query selection.

        Args:
            memory (Tensor): Encoder output, (bs, num_feat_points, dim).
            memory_mask (Tensor, optional): (bs, num_feat_points), True on
                padding; None when no image of the batch is padded.
            spatial_shapes (Tensor): (num_levels, 2) as (h, w).
            cls_branches, reg_branches (nn.ModuleList): The query head's
                branches; index ``decoder.num_layers`` scores the proposals.
            query_embed (Tensor): Content queries of mixed selection,
                (num_queries, dim).

        Returns:
            tuple[dict, dict]: Decoder inputs (``query``, ``query_pos``,
            ``reference_points``) and encoder outputs for the loss
            (``enc_outputs_class`` (bs, num_feat_points, num_classes),
            ``enc_outputs_coord`` (bs, num_feat_points, 4) normalised
            (cx, cy, w, h)).
        """
        self.check_num_tokens(memory)
        c = memory.size(-1)
        output_memory, output_proposals = self.gen_encoder_output_proposals(
            memory, memory_mask, spatial_shapes)
        num_layers = self.decoder.num_layers
        enc_outputs_class = cls_branches[num_layers](output_memory)
        enc_outputs_coord_unact = reg_branches[num_layers](
            output_memory) + output_proposals
        # Binary (foreground) selection on class channel 0: the encoder loss
        # trains channel 0 with every ground truth relabelled as class 0.
        topk = torch.topk(
            enc_outputs_class[..., 0], self.num_queries, dim=1)[1]
        topk_coords_unact = torch.gather(enc_outputs_coord_unact, 1,
                                         topk.unsqueeze(-1).expand(
                                             -1, -1, 4)).detach()
        pos_trans_out = self.pos_trans_norm(
            self.pos_trans_fc(
                self.get_proposal_pos_embed(
                    topk_coords_unact, num_pos_feats=c // 2)))
        query_pos, query = torch.split(pos_trans_out, c, dim=2)
        if self.mixed_selection:
            query = query_embed.unsqueeze(0).expand(memory.size(0), -1, -1)
        decoder_inputs = dict(
            query=query,
            query_pos=query_pos,
            reference_points=topk_coords_unact.sigmoid())
        enc_outputs = dict(
            enc_outputs_class=enc_outputs_class,
            enc_outputs_coord=enc_outputs_coord_unact.sigmoid())
        return decoder_inputs, enc_outputs

    def forward_decoder(self, query: Tensor, query_pos: Tensor,
                        reference_points: Tensor, memory: Tensor,
                        memory_mask: Optional[Tensor], spatial_shapes: Tensor,
                        level_start_index: Tensor, valid_ratios: Tensor,
                        reg_branches: nn.ModuleList,
                        **kwargs) -> Tuple[Tensor, list]:
        """Decode with box refinement.

        Returns:
            tuple[Tensor, list[Tensor]]: Hidden states (num_layers, bs,
            num_queries, dim) and ``[initial reference, *per-layer
            references]``, each (bs, num_queries, 4): the layout mmdet's
            ``DeformableDETRHead.forward`` expects.
        """
        hidden_states, inter_refs = self.decoder(
            query=query,
            query_pos=query_pos,
            value=memory,
            key_padding_mask=memory_mask,
            reference_points=reference_points,
            spatial_shapes=spatial_shapes,
            level_start_index=level_start_index,
            valid_ratios=valid_ratios,
            reg_branches=reg_branches,
            **kwargs)
        return hidden_states, [reference_points, *inter_refs]

    def forward_aux(
            self,
            aux_coords: Sequence[Tensor],
            aux_feats: Sequence[Tensor],
            memory: Tensor,
            memory_mask: Optional[Tensor],
            spatial_shapes: Tensor,
            level_start_index: Tensor,
            valid_ratios: Tensor,
            reg_branches: nn.ModuleList,
            head_ids: Optional[Sequence[int]] = None) -> Tuple[Tensor, list]:
        """Decode the customised positive queries of every auxiliary head.

        Set k's queries come from its boxes and features through head k's
        projections (docs/design.md, positive queries). All sets are decoded in
        one pass,
        concatenated along the query axis; a block-diagonal self-attention
        mask keeps them apart, so each set is decoded as if alone. The
        memory is the encoder output already computed for the main queries
        (re-flattening the pyramid gives the same tensor), and the main
        queries are not part of this pass.

        Args:
            aux_coords (Sequence[Tensor]): Per set k, normalised
                (cx, cy, w, h) boxes, (bs, N_k, 4).
            aux_feats (Sequence[Tensor]): Per set k, features (bs, N_k, dim).
            memory ... valid_ratios: As in :meth:`forward_decoder`.
            reg_branches (nn.ModuleList): Per-layer regression branches.
            head_ids (Sequence[int], optional): The auxiliary head of each
                set (selects its projections); defaults to 0, 1, ...

        Returns:
            tuple[Tensor, list[Tensor]]: As :meth:`forward_decoder`, with
            sum(N_k) queries in the order of the sets.
        """
        c = memory.size(-1)
        queries, query_pos = [], []
        head_ids = range(len(aux_coords)) if head_ids is None else head_ids
        for k, coords, feats in zip(head_ids, aux_coords, aux_feats):
            pos_trans_out = self.aux_pos_trans_norm[k](
                self.aux_pos_trans[k](self.get_proposal_pos_embed(
                    inverse_sigmoid(coords), num_pos_feats=c // 2)))
            pos, query = torch.split(pos_trans_out, c, dim=2)
            queries.append(query + self.pos_feats_norm[k]
                           (self.pos_feats_trans[k](feats)))
            # (1,) or (dim,): broadcast over queries either way
            # (docs/design.md, positive queries).
            query_pos.append(pos + self.head_pos_embed.weight[k])
        attn_mask = self.block_diagonal_mask(
            [coords.size(1) for coords in aux_coords], memory.device)
        return self.forward_decoder(
            torch.cat(queries, dim=1),
            torch.cat(query_pos, dim=1),
            torch.cat(list(aux_coords), dim=1),
            memory,
            memory_mask,
            spatial_shapes,
            level_start_index,
            valid_ratios,
            reg_branches,
            self_attn_mask=attn_mask)
