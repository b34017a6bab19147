"""The Co-DINO transformer (docs/design.md, query selection).

Built on :class:`~.co_transformer_base.CoTransformerBase` (encoder side,
mmdet's Deformable DETR stages) with mmdet's DINO decoder. What Co-DINO
changes with respect to Co-Deformable-DETR:

- query selection: the top ``num_queries`` encoder tokens by their maximum
  class logit; the selected logits and boxes are the encoder outputs that
  the encoder loss supervises (with real labels); the content queries are a
  learnt embedding; denoising queries are prepended in training;
- decoder: the positional query of every layer is an MLP of the sine
  embedding of the current (valid-ratio-scaled) reference box, and all
  layers share an output LayerNorm (mmdet's ``DinoTransformerDecoder``);
- customised positive queries: content = LN(Linear(512 -> 256)(PE(box)));
  no feature term and no head embedding (the decoder derives the
  positional query from the reference box).
"""
from typing import Dict, Optional, Tuple

import torch
from mmdet.models.layers import inverse_sigmoid
from mmdet.registry import MODELS
from mmdet.utils import ConfigType, OptMultiConfig
from torch import Tensor, nn

from .co_dino_decoder import CoDinoTransformerDecoder
from .co_transformer_base import CoTransformerBase


@MODELS.register_module()
class CoDinoTransformer(CoTransformerBase):
    """Encoder, top-k query selection, denoising and the DINO decoder.

    Args:
        encoder (dict): Config of ``CoDeformableDetrTransformerEncoder``.
        decoder (dict): Config of :class:`CoDinoTransformerDecoder`.
        positional_encoding (dict): Config of ``SinePositionalEncoding``.
            Injected by the query head.
        num_queries (int): Matching queries selected from the encoder.
            Injected by the query head. Defaults to 900.
        num_feature_levels (int): Encoder levels. Defaults to 5.
        num_co_heads (int): Number of auxiliary heads that supply positive
            coordinates; injected by the detector. Defaults to 0.
        init_cfg (dict, optional): Initialisation config.
    """

    decoder_type = CoDinoTransformerDecoder

    def __init__(self,
                 encoder: ConfigType,
                 decoder: ConfigType,
                 positional_encoding: ConfigType,
                 num_queries: int = 900,
                 num_feature_levels: int = 5,
                 num_co_heads: int = 0,
                 init_cfg: OptMultiConfig = None) -> None:
        super().__init__(
            encoder,
            decoder,
            positional_encoding,
            num_queries=num_queries,
            num_feature_levels=num_feature_levels,
            num_co_heads=num_co_heads,
            init_cfg=init_cfg)
        dims = self.embed_dims
        self.query_embedding = nn.Embedding(num_queries, dims)
        # Content of the customised positive queries, one per auxiliary head.
        self.aux_pos_trans = nn.ModuleList(
            nn.Linear(dims * 2, dims) for _ in range(num_co_heads))
        self.aux_pos_trans_norm = nn.ModuleList(
            nn.LayerNorm(dims) for _ in range(num_co_heads))

    def init_weights(self) -> None:
        """The base init, then N(0, 1) content queries (as released)."""
        super().init_weights()
        nn.init.normal_(self.query_embedding.weight)

    def pre_decoder(
        self,
        memory: Tensor,
        memory_mask: Optional[Tensor],
        spatial_shapes: Tensor,
        cls_branches: nn.ModuleList,
        reg_branches: nn.ModuleList,
        dn_label_query: Optional[Tensor] = None,
        dn_bbox_query: Optional[Tensor] = None,
    ) -> Tuple[Dict, Dict]:
        """Two-stage proposals, top-k selection, denoising queries.

        Args:
            memory (Tensor): Encoder output, (bs, num_feat_points, dim).
            memory_mask (Tensor, optional): (bs, num_feat_points), True on
                padding; None when no image of the batch is padded.
            spatial_shapes (Tensor): (num_levels, 2) as (h, w).
            cls_branches, reg_branches (nn.ModuleList): The query head's
                branches; index ``decoder.num_layers`` scores the proposals.
            dn_label_query (Tensor, optional): Denoising content queries,
                (bs, num_dn, dim), prepended to the matching queries.
            dn_bbox_query (Tensor, optional): Their reference boxes as
                inverse-sigmoid normalised (cx, cy, w, h), (bs, num_dn, 4).

        Returns:
            tuple[dict, dict]: Decoder inputs (``query`` (bs, num_dn +
            num_queries, dim), ``reference_points`` (bs, num_dn +
            num_queries, 4) normalised (cx, cy, w, h)) and the encoder
            outputs of the selected tokens for the loss
            (``enc_outputs_class`` (bs, num_queries, num_classes) logits,
            ``enc_outputs_coord`` (bs, num_queries, 4) normalised
            (cx, cy, w, h), both not detached).
        """
        self.check_num_tokens(memory)
        output_memory, output_proposals = self.gen_encoder_output_proposals(
            memory, memory_mask, spatial_shapes)
        num_layers = self.decoder.num_layers
        enc_outputs_class = cls_branches[num_layers](output_memory)
        enc_outputs_coord_unact = reg_branches[num_layers](
            output_memory) + output_proposals
        # Multi-class selection: a token's score is its best class logit.
        topk = torch.topk(
            enc_outputs_class.max(-1)[0], self.num_queries, dim=1)[1]
        topk_score = torch.gather(
            enc_outputs_class, 1,
            topk.unsqueeze(-1).expand(-1, -1, enc_outputs_class.size(-1)))
        topk_coords_unact = torch.gather(
            enc_outputs_coord_unact, 1,
            topk.unsqueeze(-1).expand(-1, -1, 4))
        topk_coords = topk_coords_unact.sigmoid()
        reference_points = topk_coords_unact.detach()
        query = self.query_embedding.weight.unsqueeze(0).expand(
            memory.size(0), -1, -1)
        if dn_label_query is not None:
            query = torch.cat([dn_label_query, query], dim=1)
            reference_points = torch.cat([dn_bbox_query, reference_points],
                                         dim=1)
        decoder_inputs = dict(
            query=query, reference_points=reference_points.sigmoid())
        enc_outputs = dict(
            enc_outputs_class=topk_score, enc_outputs_coord=topk_coords)
        return decoder_inputs, enc_outputs

    def forward_decoder(self, *args, **kwargs) -> Tuple[Tensor, list]:
        """Decode with box refinement (:meth:`CoTransformerBase.
        forward_decoder`'s arguments; ``self_attn_mask`` (num_queries,
        num_queries) bool, True where attention is blocked).

        Returns:
            tuple[Tensor, list[Tensor]]: Hidden states (num_layers, bs,
            num_queries, dim) after the shared norm, and ``[initial
            reference, *per-layer references]``, each (bs, num_queries, 4):
            the DINO decoder returns the initial reference itself.
        """
        hidden_states, references = super().forward_decoder(*args, **kwargs)
        return hidden_states, references[1:]

    def aux_query_set(self, head_id: int, coords: Tensor,
                      feats: Tensor) -> Dict[str, Tensor]:
        """Head ``head_id``'s positive queries: content LN_k(Linear_k(PE(box)))
        with PE the 512-d sine embedding of the box (mmdet's
        ``get_proposal_pos_embed``). The released Co-DINO uses no feature
        term (``with_coord_feat=False``), so ``feats`` only gives the width.

        Args:
            head_id (int): The auxiliary head.
            coords (Tensor): (bs, N, 4) normalised (cx, cy, w, h).
            feats (Tensor): (bs, N, dim); unused but for its width.

        Returns:
            dict[str, Tensor]: ``query``, (bs, N, dim).
        """
        return dict(query=self.aux_pos_trans_norm[head_id](
            self.aux_pos_trans[head_id](self.get_proposal_pos_embed(
                inverse_sigmoid(coords), num_pos_feats=feats.size(-1) // 2))))
