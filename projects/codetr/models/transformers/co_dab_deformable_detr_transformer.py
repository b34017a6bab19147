"""The (Co-)DAB-Deformable-DETR transformer.

Built on :class:`~.co_transformer_base.CoTransformerBase` (encoder side,
mmdet's Deformable DETR stages). What DAB-Deformable-DETR changes
(docs/design.md, DAB-Deformable-DETR):

- no query selection: the queries are learnt, a content embedding
  (``tgt_embed``) and an anchor box (``refpoint_embed``, inverse-sigmoid
  (cx, cy, w, h)) each, as in DAB-DETR's code;
- the decoder generates the positional queries from the anchors at every
  layer (:mod:`.dab_deformable_detr_decoder`);
- ``aux_query_set``: the auxiliary heads' positive boxes become the anchors
  of the extra query groups, their features the content queries
  (docs/design.md, positive queries).
"""
from typing import Dict, Tuple

from mmdet.registry import MODELS
from torch import Tensor, nn

from .co_transformer_base import CoTransformerBase
from .dab_deformable_detr_decoder import DABDeformableDetrTransformerDecoder


@MODELS.register_module()
class CoDABDeformableDetrTransformer(CoTransformerBase):
    """Encoder, learnt anchor queries and the DAB decoder.

    Args:
        encoder (dict): Config of ``CoDeformableDetrTransformerEncoder``.
        decoder (dict): Config of :class:`DABDeformableDetrTransformerDecoder`
            (``num_layers``, ``layer_cfg``).
        positional_encoding (dict): Config of ``SinePositionalEncoding``.
            Injected by the query head.
        num_queries (int): Number of anchor queries. Injected by the query
            head.
        num_feature_levels (int): Encoder levels. Defaults to 4.
        num_co_heads (int): Number of auxiliary heads that supply positive
            boxes; injected by the detector. Defaults to 0.
        init_cfg (dict, optional): Initialisation config.
    """

    decoder_type = DABDeformableDetrTransformerDecoder
    as_two_stage = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        dims = self.embed_dims
        # content and anchor of each query; N(0, 1) as nn.Embedding
        # initialises them (DAB-DETR's code keeps that init)
        self.tgt_embed = nn.Embedding(self.num_queries, dims)
        self.refpoint_embed = nn.Embedding(self.num_queries, 4)
        # Customised positive queries: one content projection per head.
        self.pos_feats_trans = nn.ModuleList(
            nn.Linear(dims, dims) for _ in range(self.num_co_heads))
        self.pos_feats_norm = nn.ModuleList(
            nn.LayerNorm(dims) for _ in range(self.num_co_heads))

    def init_weights(self) -> None:
        """The base's init (Xavier on matrices, deformable attention,
        level embeddings), then the query embeddings back to N(0, 1): DAB-
        DETR's code creates them after its transformer's Xavier pass."""
        super().init_weights()
        nn.init.normal_(self.tgt_embed.weight)
        nn.init.normal_(self.refpoint_embed.weight)

    def pre_decoder(self, memory: Tensor, *args,
                    **kwargs) -> Tuple[Dict, Dict]:
        """The learnt queries for every image; no encoder outputs.

        Args:
            memory (Tensor): Encoder output, (bs, num_feat_points, dim), for
                the batch size. The other arguments (padding mask, shapes,
                the head's branches, ``query_embed``) are those of two-stage
                transformers and unused.

        Returns:
            tuple[dict, dict]: Decoder inputs (``query`` (bs, num_queries,
            dim), ``reference_points`` (bs, num_queries, 4) normalised
            (cx, cy, w, h)) and the encoder outputs for the loss, both None
            (no encoder loss without query selection).
        """
        bs = memory.size(0)
        query = self.tgt_embed.weight.unsqueeze(0).expand(bs, -1, -1)
        anchors = self.refpoint_embed.weight.sigmoid()
        decoder_inputs = dict(
            query=query,
            reference_points=anchors.unsqueeze(0).expand(bs, -1, -1))
        return decoder_inputs, dict(
            enc_outputs_class=None, enc_outputs_coord=None)

    def aux_query_set(self, head_id: int, coords: Tensor,
                      feats: Tensor) -> Dict[str, Tensor]:
        """Head ``head_id``'s positive queries: the boxes are their anchors
        (passed to the decoder by ``forward_with_aux``), the features through
        the head's projection their content. The decoder generates their
        positional queries from the anchors, as for the learnt queries, so
        no positional projection is learnt per head.

        Args:
            head_id (int): The auxiliary head.
            coords (Tensor): (bs, N, 4) normalised (cx, cy, w, h); unused
                here.
            feats (Tensor): (bs, N, dim).

        Returns:
            dict[str, Tensor]: ``query``, (bs, N, dim).
        """
        return dict(query=self.pos_feats_norm[head_id](
            self.pos_feats_trans[head_id](feats)))
