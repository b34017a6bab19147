"""The query head of Co-Deformable-DETR."""
from typing import Dict, Sequence

from mmdet.models.dense_heads import DeformableDETRHead
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from mmdet.utils import ConfigType, OptConfigType
from torch import Tensor, nn

from .batched_detr_loss import BatchedMatchingDETRHead
from .co_query_head_mixin import CoQueryHeadMixin


@MODELS.register_module()
class CoDeformDETRHead(CoQueryHeadMixin, DeformableDETRHead,
                       BatchedMatchingDETRHead):
    """Two-stage Deformable DETR head with box refinement, mixed selection,
    look-forward-twice and customised positive queries.

    Compared with mmdet's ``DeformableDETRHead`` this head owns the
    transformer (so auxiliary decoding can reuse it), the content queries of
    mixed selection and the stride-2 ``downsample`` that completes the
    auxiliary pyramid; it adds the one-to-many loss of the customised
    positive queries (:meth:`loss_aux`, shared with the other query heads
    through :class:`CoQueryHeadMixin`). Matching, main and encoder losses
    and post-processing are mmdet's, the losses of all decoder layers
    matched and reduced at once (:class:`BatchedMatchingDETRHead`).

    Args:
        transformer (dict): Config of ``CoDeformableDetrTransformer``.
        positional_encoding (dict, optional): Config of the sine positional
            encoding; defaults to ``num_feats=128, normalize=True,
            offset=-0.5`` (docs/design.md, released code).
        num_query (int): Number of queries. Defaults to 300.
        max_pos_coords (int): Upper bound of customised positive queries per
            image and auxiliary head. Defaults to 300.
        lambda_1 (float): Weight of the auxiliary-query losses.
            Defaults to 1.0.
        with_aux_pyramid (bool): Build the ``downsample`` that completes the
            auxiliary heads' pyramid; set by ``CoDETR`` (False without
            auxiliary heads). Defaults to True.
        **kwargs: ``DeformableDETRHead`` arguments (``num_classes``,
            ``batched_matching`` of ``BatchedMatchingDETRHead``,
            ``embed_dims``, losses, ``train_cfg``, ``test_cfg``...). The
            prediction-layer layout (``share_pred_layer``, ``num_pred_layer``,
            ``as_two_stage``) is derived and must not be set.
    """

    def __init__(self,
                 *args,
                 transformer: ConfigType,
                 positional_encoding: OptConfigType = None,
                 num_query: int = 300,
                 max_pos_coords: int = 300,
                 lambda_1: float = 1.0,
                 with_aux_pyramid: bool = True,
                 **kwargs) -> None:
        derived = ('share_pred_layer', 'num_pred_layer', 'as_two_stage')
        set_by_user = [k for k in derived if k in kwargs]
        if set_by_user:
            raise ValueError(f'{set_by_user} are derived from the decoder; '
                             'remove them from the query_head config.')
        transformer = dict(transformer)
        num_dec_layers = transformer['decoder']['num_layers']
        self._init_co_attrs(num_query, max_pos_coords, lambda_1,
                            with_aux_pyramid)
        if positional_encoding is None:
            positional_encoding = dict(
                num_feats=128, normalize=True, offset=-0.5)
        self._transformer_cfg = dict(
            transformer,
            positional_encoding=positional_encoding,
            num_queries=num_query)
        # Branches 0..L-1 predict per decoder layer, branch L scores the
        # encoder proposals; box refinement needs them unshared.
        super().__init__(
            *args,
            share_pred_layer=False,
            num_pred_layer=num_dec_layers + 1,
            as_two_stage=True,
            **kwargs)

    def _init_layers(self) -> None:
        """Branches (mmdet's), transformer, content queries, downsample."""
        super()._init_layers()
        self.transformer = MODELS.build(self._transformer_cfg)
        dims = self.transformer.embed_dims
        if dims != self.embed_dims:
            raise ValueError(f'query_head.embed_dims ({self.embed_dims}) must '
                             f'equal the transformer width ({dims})')
        self.query_embedding = nn.Embedding(self.num_query, dims)
        self._init_aux_pyramid()

    def init_weights(self) -> None:
        """mmdet's branch init (focal prior bias, zeroed last reg layers),
        then the transformer's; the content queries keep N(0, 1)."""
        super().init_weights()
        self.transformer.init_weights()

    def forward_transformer(self, mlvl_feats: Sequence[Tensor],
                            batch_data_samples: SampleList) -> Dict:
        """Encoder, query selection and decoder for the main queries.

        Returns:
            dict: The outputs of :meth:`encode` plus ``hidden_states``
            (num_layers, bs, num_query, dim), ``references`` (list of
            num_layers + 1 tensors (bs, num_query, 4)), ``enc_outputs_class``
            and ``enc_outputs_coord``.
        """
        enc = self.encode(mlvl_feats, batch_data_samples)
        decoder_inputs, enc_outputs = self.transformer.pre_decoder(
            enc['memory'], enc['memory_mask'], enc['spatial_shapes'],
            self.cls_branches, self.reg_branches, self.query_embedding.weight)
        hidden_states, references = self.transformer.forward_decoder(
            **decoder_inputs, **enc, reg_branches=self.reg_branches)
        return dict(
            enc,
            hidden_states=hidden_states,
            references=references,
            **enc_outputs)
