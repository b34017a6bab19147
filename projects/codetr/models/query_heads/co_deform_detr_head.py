"""The query head of Co-Deformable-DETR."""
from typing import Dict, List, Sequence, Tuple

import torch
from mmdet.models.dense_heads import DeformableDETRHead
from mmdet.models.layers import inverse_sigmoid
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy
from mmdet.utils import ConfigType, OptConfigType, reduce_mean
from mmengine.structures import InstanceData
from torch import Tensor, nn

from ..positive_coords import AuxQueryTargets, PositiveCoords, build_aux_targets


@MODELS.register_module()
class CoDeformDETRHead(DeformableDETRHead):
    """Two-stage Deformable DETR head with box refinement, mixed selection,
    look-forward-twice and customised positive queries.

    Compared with mmdet's ``DeformableDETRHead`` this head owns the
    transformer (so auxiliary decoding can reuse it), the content queries of
    mixed selection and the stride-2 ``downsample`` that completes the
    auxiliary pyramid; it adds the one-to-many loss of the customised
    positive queries (:meth:`loss_aux`). Matching, main and encoder losses
    and post-processing are mmdet's.

    Args:
        transformer (dict): Config of ``CoDeformableDetrTransformer``.
        positional_encoding (dict, optional): Config of the sine positional
            encoding; defaults to ``num_feats=128, normalize=True,
            offset=-0.5`` (spec 1.2).
        num_query (int): Number of queries. Defaults to 300.
        max_pos_coords (int): Upper bound of customised positive queries per
            image and auxiliary head. Defaults to 300.
        lambda_1 (float): Weight of the auxiliary-query losses.
            Defaults to 1.0.
        with_aux_pyramid (bool): Build the ``downsample`` that completes the
            auxiliary heads' pyramid; set by ``CoDETR`` (False without
            auxiliary heads). Defaults to True.
        **kwargs: ``DeformableDETRHead`` arguments (``num_classes``,
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
        self.num_query = num_query
        self.max_pos_coords = max_pos_coords
        self.lambda_1 = lambda_1
        self.with_aux_pyramid = with_aux_pyramid
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
        if self.with_aux_pyramid:
            self.downsample = nn.Sequential(
                nn.Conv2d(dims, dims, kernel_size=3, stride=2, padding=1),
                nn.GroupNorm(32, dims))

    def init_weights(self) -> None:
        """mmdet's branch init (focal prior bias, zeroed last reg layers),
        then the transformer's; the content queries keep N(0, 1)."""
        super().init_weights()
        self.transformer.init_weights()

    @property
    def num_co_heads(self) -> int:
        """Number of auxiliary heads whose positives this head decodes."""
        return self.transformer.num_co_heads

    def encode(self, mlvl_feats: Sequence[Tensor],
               batch_data_samples: SampleList) -> Dict[str, Tensor]:
        """Flatten the neck features, add positions and run the encoder.

        Args:
            mlvl_feats (Sequence[Tensor]): Neck outputs, each (bs, dim, h, w).
            batch_data_samples (list[DetDataSample]): Provide ``img_shape``
                and ``batch_input_shape`` for the padding masks.

        Returns:
            dict: ``memory`` (bs, num_feat_points, dim), ``memory_mask``
            (bs, num_feat_points) or None, ``spatial_shapes``,
            ``level_start_index``, ``valid_ratios``: the inputs of every
            decoder pass.
        """
        encoder_inputs, decoder_inputs = self.transformer.pre_transformer(
            mlvl_feats, batch_data_samples)
        memory = self.transformer.forward_encoder(**encoder_inputs)['memory']
        return dict(decoder_inputs, memory=memory)

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

    def memory_to_pyramid(self, memory: Tensor,
                          mlvl_feats: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        """Turn the encoder memory into the auxiliary heads' pyramid.

        The memory is split back into its levels and a stride-2
        ``downsample`` of the last level is appended (spec 2.3). Nothing is
        detached: auxiliary losses train encoder, neck and backbone.

        Args:
            memory (Tensor): (bs, sum(h_l * w_l), dim).
            mlvl_feats (Sequence[Tensor]): The neck features, for their
                spatial sizes (read from shapes, no device sync).

        Returns:
            tuple[Tensor]: num_levels + 1 contiguous maps, each
            (bs, dim, h_l, w_l).
        """
        if not self.with_aux_pyramid:
            raise RuntimeError('this query head was built without auxiliary '
                               'heads (with_aux_pyramid=False)')
        bs, _, dims = memory.shape
        sizes = [feat.shape[-2:] for feat in mlvl_feats]
        levels = memory.split([h * w for h, w in sizes], dim=1)
        # Each level must be a dense NCHW tensor, not a strided view of the
        # memory: mmcv's RoIAlign (CPU and CUDA) reads ``data_ptr()`` as
        # dense NCHW and ignores strides, so a transposed view would pool
        # the wrong elements (and image n > 0 would read image 0's memory).
        # One copy of the memory in all.
        pyramid = [
            level.transpose(1, 2).contiguous().view(bs, dims, h, w)
            for level, (h, w) in zip(levels, sizes)
        ]
        pyramid.append(self.downsample(pyramid[-1]))
        return tuple(pyramid)

    def loss_by_feat(self, all_layers_cls_scores: Tensor,
                     all_layers_bbox_preds: Tensor, enc_cls_scores: Tensor,
                     enc_bbox_preds: Tensor, *args, **kwargs) -> Dict:
        """mmdet's main and encoder losses, computed in fp32.

        Under autocast the branches output fp16; the focal matching cost
        ``log(1 - p + 1e-12)`` then underflows to ``-inf`` and the Hungarian
        solver rejects the cost matrix (MD#11416). Losses and matching
        therefore see fp32 predictions.
        """
        return super().loss_by_feat(all_layers_cls_scores.float(),
                                    all_layers_bbox_preds.float(),
                                    enc_cls_scores.float(),
                                    enc_bbox_preds.float(), *args, **kwargs)

    def _get_targets_single(self, cls_score: Tensor, bbox_pred: Tensor,
                            gt_instances: InstanceData,
                            img_meta: dict) -> tuple:
        """Hungarian targets of one image, matched on finite predictions.

        A non-finite prediction (a diverging fp16 step, before the loss
        scaler skips it) would make ``linear_sum_assignment`` raise; it is
        matched as a zero instead, and the loss still sees the original
        value, so the step is skipped as usual.
        """
        return super()._get_targets_single(
            torch.nan_to_num(cls_score.detach(), 0.0, 0.0, 0.0),
            torch.nan_to_num(bbox_pred.detach(), 0.5, 1.0, 0.0), gt_instances,
            img_meta)

    def loss_aux(self, enc: Dict, pos_coords: Sequence[PositiveCoords],
                 batch_data_samples: SampleList) -> Dict[str, Tensor]:
        """One-to-many losses of the customised positive queries (spec 3.4).

        The query sets of all auxiliary heads are decoded in one decoder
        pass: concatenated along the query axis, with a block-diagonal
        self-attention mask so that no set sees another. Deformable
        cross-attention and the FFNs act per query, so this computes what
        one pass per set computes, with one value projection of the memory
        and one set of kernel launches instead of K.

        Args:
            enc (dict): Output of :meth:`encode` (or
                :meth:`forward_transformer`).
            pos_coords (Sequence[PositiveCoords]): Positives of auxiliary
                heads 0..K-1; k selects the query projections and suffixes
                the loss keys.
            batch_data_samples (list[DetDataSample]): For ``img_shape``.

        Returns:
            dict[str, Tensor]: ``loss_{cls,bbox,iou}_aux{k}`` for the last
            decoder layer and ``d{i}.loss_{cls,bbox,iou}_aux{k}`` for the
            others (spec 2.6).
        """
        if not pos_coords:
            return dict()
        batch_img_metas = [s.metainfo for s in batch_data_samples]
        targets = [
            build_aux_targets(coords, batch_img_metas, self.num_classes,
                              self.max_pos_coords) for coords in pos_coords
        ]
        hidden_states, references = self.transformer.forward_aux(
            [t.coords for t in targets], [t.feats for t in targets],
            enc['memory'],
            enc['memory_mask'],
            enc['spatial_shapes'],
            enc['level_start_index'],
            enc['valid_ratios'],
            reg_branches=self.reg_branches)
        all_cls_scores, all_bbox_preds = self(hidden_states, references)
        return self.loss_aux_by_feat(all_cls_scores, all_bbox_preds, targets,
                                     batch_img_metas)

    def loss_aux_by_feat(self, all_cls_scores: Tensor, all_bbox_preds: Tensor,
                         targets: Sequence[AuxQueryTargets],
                         batch_img_metas: List[dict]) -> Dict[str, Tensor]:
        """Losses of every decoder layer and query set, fixed targets.

        Each configured loss is evaluated once, element-wise, over all
        layers and sets; the per-(layer, set) sums are then divided by the
        set's average factor, which is what one ``loss(..., avg_factor)``
        call per layer and set returns.

        Args:
            all_cls_scores (Tensor): (num_layers, bs, sum N_k, num_classes)
                logits, the sets concatenated along the query axis.
            all_bbox_preds (Tensor): (num_layers, bs, sum N_k, 4) normalised
                (cx, cy, w, h).
            targets (Sequence[AuxQueryTargets]): Targets of each set.
            batch_img_metas (list[dict]): For ``img_shape``.

        Returns:
            dict[str, Tensor]: 3 losses per decoder layer and set.
        """
        num_layers, bs, num_queries, num_classes = all_cls_scores.shape
        sizes = [t.labels.size(1) for t in targets]

        def cat(name: str) -> Tensor:  # (bs, sum N_k, ...) over the sets
            return torch.cat([getattr(t, name) for t in targets], dim=1)

        def per_layer(t: Tensor) -> Tensor:  # repeat targets for each layer
            return t.unsqueeze(0).expand(num_layers,
                                         *t.shape).reshape(-1, *t.shape[2:])

        labels, label_weights = cat('labels'), cat('label_weights')
        bbox_targets, bbox_weights = cat('bbox_targets'), cat('bbox_weights')
        img_hw = all_bbox_preds.new_tensor(
            [meta['img_shape'][:2] for meta in batch_img_metas])
        factors = img_hw[:, None, [1, 0, 1, 0]].expand(-1, num_queries, -1)
        # fp32 under autocast; element-wise losses, summed per layer and set
        cls_scores = all_cls_scores.float().reshape(-1, num_classes)
        bbox_preds = all_bbox_preds.float().reshape(-1, 4)
        loss_cls = self.loss_cls(
            cls_scores,
            per_layer(labels).reshape(-1),
            per_layer(label_weights).reshape(-1),
            reduction_override='none')
        loss_bbox = self.loss_bbox(
            bbox_preds,
            per_layer(bbox_targets).reshape(-1, 4),
            per_layer(bbox_weights).reshape(-1, 4),
            reduction_override='none')
        loss_iou = self.loss_iou(
            bbox_cxcywh_to_xyxy(bbox_preds) *
            per_layer(factors).reshape(-1, 4),
            bbox_cxcywh_to_xyxy(
                per_layer(bbox_targets * factors).reshape(-1, 4)),
            per_layer(bbox_weights).reshape(-1, 4),
            reduction_override='none')
        # mmdet's L1/GIoU return a scalar 0 when no weight is positive
        loss_bbox, loss_iou = (
            loss.expand(bbox_preds.size(0)) if loss.dim() == 0 else loss
            for loss in (loss_bbox, loss_iou))

        eps = torch.finfo(torch.float32).eps  # as mmdet's weight_reduce_loss
        losses = dict()
        for name, loss in (('cls', loss_cls), ('bbox', loss_bbox), ('iou',
                                                                    loss_iou)):
            loss = loss.reshape(num_layers, bs, num_queries,
                                -1).sum(dim=(1, 3))  # (num_layers, sum N_k)
            for k, (part, target) in enumerate(
                    zip(loss.split(sizes, dim=1), targets)):
                # positives reduced over GPUs, at least 1, kept on device
                num_pos = target.bbox_weights[..., 0].sum()
                if self.sync_cls_avg_factor:
                    num_pos = reduce_mean(num_pos)
                values = part.sum(1) / (num_pos.clamp(min=1) + eps)
                values = values * self.lambda_1
                for layer in range(num_layers):
                    prefix = '' if layer == num_layers - 1 else f'd{layer}.'
                    losses[f'{prefix}loss_{name}_aux{k}'] = values[layer]
        return losses

    def predict_by_outputs(self,
                           outs: Dict,
                           batch_data_samples: SampleList,
                           rescale: bool = True) -> list:
        """Top-100 over the last layer's (query, class) scores, no NMS.

        Args:
            outs (dict): Output of :meth:`forward_transformer`.
            batch_data_samples (list[DetDataSample]): For the image metas.
            rescale (bool): Map boxes back to the original image.

        Returns:
            list[InstanceData]: ``bboxes`` (n, 4) absolute (x1, y1, x2, y2),
            ``scores`` (n, ), ``labels`` (n, ) per image.
        """
        batch_img_metas = [s.metainfo for s in batch_data_samples]
        # Only the last layer is post-processed: skip the other branches.
        last = outs['hidden_states'][-1:]
        refs = outs['references']
        layer = len(refs) - 2
        cls_scores = self.cls_branches[layer](last)
        coords = self.reg_branches[layer](last)
        coords = (coords + inverse_sigmoid(refs[layer])).sigmoid()
        return self.predict_by_feat(
            cls_scores, coords, batch_img_metas, rescale=rescale)
