"""The Co-Deformable-DETR transformer.

Built on :class:`~.co_transformer_base.CoTransformerBase` (encoder side,
mmdet's Deformable DETR stages). What Co-Deformable-DETR adds:

- ``pre_decoder``: mixed selection (docs/design.md, query selection);
- the decoder returns non-detached references (look-forward-twice,
  docs/design.md, query selection)
  and the layers use fp32 deformable sampling under autocast
  (``co_deformable_detr_layers``);
- ``aux_query_set``: the customised positive queries (docs/design.md,
  positive queries), decoded by ``AuxQueryDecoding.forward_with_aux``.
"""
from typing import Dict, Optional, Tuple

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

    def aux_query_set(self, head_id: int, coords: Tensor,
                      feats: Tensor) -> Dict[str, Tensor]:
        """Head ``head_id``'s positive queries (docs/design.md, positive
        queries): the sine embedding of the boxes through the head's
        projection gives the positional query and a content part, to which
        the projected features are added; the head's learnt embedding is
        added to the positional query.

        Args:
            head_id (int): The auxiliary head.
            coords (Tensor): (bs, N, 4) normalised (cx, cy, w, h).
            feats (Tensor): (bs, N, dim).

        Returns:
            dict[str, Tensor]: ``query`` and ``query_pos``, (bs, N, dim).
        """
        c = feats.size(-1)
        pos_trans_out = self.aux_pos_trans_norm[head_id](
            self.aux_pos_trans[head_id](self.get_proposal_pos_embed(
                inverse_sigmoid(coords), num_pos_feats=c // 2)))
        pos, query = torch.split(pos_trans_out, c, dim=2)
        query = query + self.pos_feats_norm[head_id](
            self.pos_feats_trans[head_id](feats))
        # (1,) or (dim,): broadcast over queries either way
        # (docs/design.md, positive queries).
        return dict(
            query=query, query_pos=pos + self.head_pos_embed.weight[head_id])
