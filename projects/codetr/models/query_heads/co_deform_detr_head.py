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
    """Deformable DETR head with box refinement and customised positive
    queries, for any Deformable-DETR-style transformer.

    Compared with mmdet's ``DeformableDETRHead`` this head owns the
    transformer (so auxiliary decoding can reuse it), the content queries of
    mixed selection and the stride-2 ``downsample`` that completes the
    auxiliary pyramid; it adds the one-to-many loss of the customised
    positive queries (:meth:`loss_with_aux`, shared with the other query heads
    through :class:`CoQueryHeadMixin`). Matching, main and encoder losses
    and post-processing are mmdet's, the losses of all decoder layers
    matched and reduced at once (:class:`BatchedMatchingDETRHead`).

    The transformer decides the query family: a two-stage one
    (``CoDeformableDetrTransformer``: Co-Deformable-DETR) gets the branch
    that scores the encoder proposals, the encoder loss and the content
    queries of mixed selection; one with learnt queries
    (``CoDABDeformableDetrTransformer``: DAB-Deformable-DETR) gets neither.
    The inverse-sigmoid ``eps`` of the box refinement is the transformer's
    too.

    Args:
        transformer (dict): Config of ``CoDeformableDetrTransformer`` or
            ``CoDABDeformableDetrTransformer``.
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
        joint_decoding (bool): In training, decode the main queries and
            the positive queries in one decoder pass (the same values up to
            the order of floating-point sums with the configs' dropout of
            0; docs/design.md, speed-ups);
            False decodes them in two passes, as released. Defaults to True.
        batched_branches (bool): Compute the class logits and boxes of all
            decoder layers with their branches stacked (one batched matrix
            product per branch layer; the same values up to the order of
            floating-point sums; docs/design.md, speed-ups); False runs
            mmdet's loop over the layers. Defaults to True.
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
                 joint_decoding: bool = True,
                 batched_branches: bool = True,
                 **kwargs) -> None:
        derived = ('share_pred_layer', 'num_pred_layer', 'as_two_stage')
        set_by_user = [k for k in derived if k in kwargs]
        if set_by_user:
            raise ValueError(f'{set_by_user} are derived from the '
                             'transformer; remove them from the query_head '
                             'config.')
        transformer = dict(transformer)
        num_dec_layers = transformer['decoder']['num_layers']
        two_stage = transformer_class(transformer).as_two_stage
        self._init_co_attrs(num_query, max_pos_coords, lambda_1,
                            with_aux_pyramid, joint_decoding,
                            batched_branches)
        if positional_encoding is None:
            positional_encoding = dict(
                num_feats=128, normalize=True, offset=-0.5)
        self._transformer_cfg = dict(
            transformer,
            positional_encoding=positional_encoding,
            num_queries=num_query)
        # Branches 0..L-1 predict per decoder layer, branch L (two-stage)
        # scores the encoder proposals; box refinement needs them unshared.
        super().__init__(
            *args,
            share_pred_layer=False,
            num_pred_layer=num_dec_layers + int(two_stage),
            as_two_stage=two_stage,
            **kwargs)

    def _init_layers(self) -> None:
        """Branches (mmdet's), transformer, content queries, downsample."""
        super()._init_layers()
        self.transformer = MODELS.build(self._transformer_cfg)
        dims = self.transformer.embed_dims
        if dims != self.embed_dims:
            raise ValueError(f'query_head.embed_dims ({self.embed_dims}) must '
                             f'equal the transformer width ({dims})')
        self.ref_eps = self.transformer.ref_eps
        if self.as_two_stage:  # content queries of mixed selection
            self.query_embedding = nn.Embedding(self.num_query, dims)
        self._init_aux_pyramid()

    def init_weights(self) -> None:
        """mmdet's branch init (focal prior bias, zeroed last reg layers),
        then the transformer's; the content queries keep N(0, 1)."""
        super().init_weights()
        self.transformer.init_weights()

    def prepare_decoding(self, mlvl_feats: Sequence[Tensor],
                         batch_data_samples: SampleList) -> Dict:
        """Encoder and query selection (two-stage: the encoder proposals'
        scores and boxes for the encoder loss, otherwise None).

        Returns:
            dict: The outputs of :meth:`encode`, ``enc_outputs_class``,
            ``enc_outputs_coord`` and ``decoder_inputs`` (``query``,
            ``reference_points``, and ``query_pos`` where the transformer
            gives it), as :meth:`CoQueryHeadMixin.prepare_decoding`.
        """
        enc = self.encode(mlvl_feats, batch_data_samples)
        query_embedding = getattr(self, 'query_embedding', None)
        decoder_inputs, enc_outputs = self.transformer.pre_decoder(
            enc['memory'], enc['memory_mask'], enc['spatial_shapes'],
            self.cls_branches, self.reg_branches,
            None if query_embedding is None else query_embedding.weight)
        return dict(enc, decoder_inputs=decoder_inputs, **enc_outputs)


def transformer_class(cfg: dict) -> type:
    """The class a transformer config builds (its ``type``: a registered
    name or the class)."""
    transformer_type = cfg['type']
    if isinstance(transformer_type, str):
        found = MODELS.get(transformer_type)
        if found is None:
            raise KeyError(f'{transformer_type!r} is not a registered '
                           'transformer; is the codetr plugin imported '
                           '(custom_imports)?')
        return found
    return transformer_type
