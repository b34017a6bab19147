"""The query head of Co-DINO (docs/design.md, query selection)."""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmcv.ops import batched_nms
from mmdet.models.dense_heads import DINOHead
from mmdet.models.layers import CdnQueryGenerator
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy, bbox_xyxy_to_cxcywh
from mmdet.utils import ConfigType, InstanceList, OptConfigType
from mmengine.structures import InstanceData
from torch import Tensor

from ..device_copies import host_to_device, image_size_factors
from ..precision.any_dtype_nms import any_dtype_nms_cfg
from .batched_detr_loss import BatchedMatchingDETRHead
from .co_query_head_mixin import CoQueryHeadMixin

# prepare_decoding's default: None is a valid value (no denoising queries)
_NOT_GIVEN = object()


class CoCdnQueryGenerator(CdnQueryGenerator):
    """mmdet's ``CdnQueryGenerator`` that reads nothing back from the device
    but its noisy-label draw, and whose batched queries take the dtype of
    the generated ones.

    mmdet counts the targets of each image on the device and builds the
    image-size factors with ``new_tensor``: host reads and blocking copies
    that wait for the GPU. The counts and sizes are known on the host, so
    here they come from there (:func:`host_to_device`); the random draws
    (``generate_dn_label_query``, ``generate_dn_bbox_query``) are mmdet's,
    in mmdet's order. mmdet also allocates the batched queries in the
    default dtype, where a float64 model's queries cannot be written.
    """

    def __call__(self, batch_data_samples: SampleList) -> tuple:
        """Denoising queries of the batch, as mmdet's ``__call__``.

        Args:
            batch_data_samples (list[DetDataSample]): ``gt_instances``
                (``bboxes`` absolute (x1, y1, x2, y2), ``labels``) and
                ``img_shape`` of each image.

        Returns:
            tuple: ``dn_label_query`` (bs, num_dn, embed_dims),
            ``dn_bbox_query`` (bs, num_dn, 4) inverse-sigmoid (cx, cy, w,
            h), ``attn_mask`` (num_dn + num_matching, num_dn +
            num_matching) bool and ``dn_meta`` (``num_denoising_queries``,
            ``num_denoising_groups``).
        """
        # one copy of all images' [w, h, w, h]
        factors = image_size_factors(
            [sample.metainfo for sample in batch_data_samples],
            batch_data_samples[0].gt_instances.bboxes)
        gt_bboxes = [
            sample.gt_instances.bboxes / factors[i:i + 1]
            for i, sample in enumerate(batch_data_samples)
        ]
        gt_labels = [
            sample.gt_instances.labels for sample in batch_data_samples
        ]
        counts = [len(labels) for labels in gt_labels]
        max_num_target = max(counts)
        num_groups = self.get_num_groups(max_num_target)
        dn_label_query = self.generate_dn_label_query(
            torch.cat(gt_labels), num_groups)
        dn_bbox_query = self.generate_dn_bbox_query(
            torch.cat(gt_bboxes), num_groups)
        dn_label_query, dn_bbox_query = self.collate_by_counts(
            dn_label_query, dn_bbox_query, counts, num_groups)
        attn_mask = self.generate_dn_mask(
            max_num_target, num_groups, device=dn_label_query.device)
        dn_meta = dict(
            num_denoising_queries=int(max_num_target * 2 * num_groups),
            num_denoising_groups=num_groups)
        return dn_label_query, dn_bbox_query, attn_mask, dn_meta

    def collate_dn_queries(self, input_label_query: Tensor,
                           input_bbox_query: Tensor, batch_idx: Tensor,
                           batch_size: int,
                           num_groups: int) -> Tuple[Tensor, Tensor]:
        """mmdet's signature of :meth:`collate_by_counts`, with the image
        of each target as a tensor (one read of its counts)."""
        counts = torch.bincount(batch_idx, minlength=batch_size).tolist()
        return self.collate_by_counts(input_label_query, input_bbox_query,
                                      counts, num_groups)

    def collate_by_counts(self, input_label_query: Tensor,
                          input_bbox_query: Tensor, counts: List[int],
                          num_groups: int) -> Tuple[Tensor, Tensor]:
        """Scatter the queries of all targets into per-image rows.

        Args:
            input_label_query (Tensor): (num_target_total * 2 * num_groups,
                embed_dims), group-major, then targets in image order.
            input_bbox_query (Tensor): (num_target_total * 2 * num_groups,
                4) inverse-sigmoid (cx, cy, w, h), in the same order.
            counts (list[int]): Targets of each image.
            num_groups (int): Denoising groups.

        Returns:
            tuple[Tensor, Tensor]: (batch_size, num_dn, embed_dims) and
            (batch_size, num_dn, 4), num_dn = 2 * num_groups * the largest
            count; a target's query goes to its image's row, at its index
            within the image plus the group's offset (mmdet's layout), zeros
            where an image has fewer targets than the most.
        """
        batch_size, max_num_target = len(counts), max(counts, default=0)
        num_copies = 2 * num_groups
        # (image, slot) of every query, built on the host
        image = np.repeat(np.arange(batch_size), counts)
        slot = np.concatenate([np.arange(n) for n in counts] +
                              [np.zeros(0, dtype=np.int64)])
        slots = slot[None] + max_num_target * np.arange(num_copies)[:, None]
        index = host_to_device(
            np.stack([np.tile(image, num_copies), slots.reshape(-1)]),
            input_label_query,
            dtype=torch.long)
        num_dn = max_num_target * num_copies
        batched_label_query = input_label_query.new_zeros(
            batch_size, num_dn, self.embed_dims)
        batched_bbox_query = input_bbox_query.new_zeros(batch_size, num_dn, 4)
        batched_label_query[index[0], index[1]] = input_label_query
        batched_bbox_query[index[0], index[1]] = input_bbox_query
        return batched_label_query, batched_bbox_query


@MODELS.register_module()
class CoDINOHead(CoQueryHeadMixin, DINOHead, BatchedMatchingDETRHead):
    """DINO head (two-stage, box refinement, contrastive denoising) with
    customised positive queries.

    Matching, main, encoder and denoising losses are mmdet's ``DINOHead``
    (with QualityFocalLoss they use IoU-aware soft targets); the denoising
    queries come from mmdet's ``CdnQueryGenerator``; the matching part of
    all decoder layers is matched and reduced at once
    (:class:`BatchedMatchingDETRHead`). Like
    :class:`CoDeformDETRHead` this head owns its transformer, the
    ``downsample`` that completes the auxiliary pyramid and the
    auxiliary-query losses (:class:`CoQueryHeadMixin`). At test time an
    ``nms`` entry in ``test_cfg`` (the released soft-NMS) is applied to the
    top ``num_query`` (query, class) pairs before keeping ``max_per_img``.

    Args:
        transformer (dict): Config of ``CoDinoTransformer``.
        positional_encoding (dict, optional): Config of the sine positional
            encoding; defaults to ``num_feats=128, normalize=True,
            temperature=20`` (offset 0).
        num_query (int): Matching queries. Defaults to 900.
        dn_cfg (dict, optional): ``CdnQueryGenerator`` arguments
            (``label_noise_scale``, ``box_noise_scale``, ``group_cfg``);
            ``num_classes``, ``embed_dims`` and ``num_matching_queries`` are
            filled in. Defaults to label noise 0.5, box noise 1.0 and
            ``100 // max_gt`` groups.
        max_pos_coords (int): Upper bound of customised positive queries per
            image and auxiliary head. Defaults to 300.
        lambda_1 (float): Weight of the auxiliary-query losses.
            Defaults to 1.0.
        with_aux_pyramid (bool): Build the ``downsample``; set by ``CoDETR``.
            Defaults to True.
        joint_decoding (bool): In training, decode the denoising, matching
            and positive queries in one decoder pass (as
            :class:`CoDeformDETRHead`; the same values up to the order of
            floating-point sums with dropout 0). Defaults to True.
        batched_branches (bool): All decoder layers' class logits and boxes
            with their branches stacked (as :class:`CoDeformDETRHead`);
            False runs mmdet's loop over the layers. Defaults to True.
        **kwargs: ``DINOHead`` arguments (``num_classes``, ``embed_dims``,
            ``batched_matching`` of ``BatchedMatchingDETRHead``, losses,
            ``train_cfg``, ``test_cfg``...). The prediction-layer layout
            is derived and must not be set.
    """

    # The released Co-DINO clamps references at 1e-3 before adding offsets.
    ref_eps = 1e-3

    def __init__(self,
                 *args,
                 transformer: ConfigType,
                 positional_encoding: OptConfigType = None,
                 num_query: int = 900,
                 dn_cfg: OptConfigType = None,
                 max_pos_coords: int = 300,
                 lambda_1: float = 1.0,
                 with_aux_pyramid: bool = True,
                 joint_decoding: bool = True,
                 batched_branches: bool = True,
                 **kwargs) -> None:
        derived = ('share_pred_layer', 'num_pred_layer', 'as_two_stage')
        set_by_user = [k for k in derived if k in kwargs]
        if set_by_user:
            raise ValueError(f'{set_by_user} are derived from the decoder; '
                             'remove them from the query_head config.')
        transformer = dict(transformer)
        num_dec_layers = transformer['decoder']['num_layers']
        self._init_co_attrs(num_query, max_pos_coords, lambda_1,
                            with_aux_pyramid, joint_decoding,
                            batched_branches)
        if positional_encoding is None:
            positional_encoding = dict(
                num_feats=128, normalize=True, temperature=20)
        self._transformer_cfg = dict(
            transformer,
            positional_encoding=positional_encoding,
            num_queries=num_query)
        self._dn_cfg = dict(
            label_noise_scale=0.5,
            box_noise_scale=1.0,
            group_cfg=dict(dynamic=True, num_groups=None,
                           num_dn_queries=100))
        self._dn_cfg.update(dn_cfg or {})
        super().__init__(
            *args,
            share_pred_layer=False,
            num_pred_layer=num_dec_layers + 1,
            as_two_stage=True,
            **kwargs)

    def _init_layers(self) -> None:
        """Branches (mmdet's), transformer, denoising generator (owns the
        label embedding), downsample."""
        super()._init_layers()
        self.transformer = MODELS.build(self._transformer_cfg)
        dims = self.transformer.embed_dims
        if dims != self.embed_dims:
            raise ValueError(f'query_head.embed_dims ({self.embed_dims}) must '
                             f'equal the transformer width ({dims})')
        self.dn_query_generator = CoCdnQueryGenerator(
            num_classes=self.num_classes,
            embed_dims=dims,
            num_matching_queries=self.num_query,
            **self._dn_cfg)
        self._init_aux_pyramid()

    def init_weights(self) -> None:
        """mmdet's branch init, then the transformer's; the label
        embedding keeps N(0, 1)."""
        super().init_weights()
        self.transformer.init_weights()

    def ground_truth_queries(self, batch_data_samples: SampleList) -> Dict:
        """The denoising queries, in training mode with ground truth.

        Returns:
            dict: ``denoising``: ``(dn_label_query, dn_bbox_query,
            dn_mask, dn_meta)`` of :class:`CoCdnQueryGenerator`, or None.
        """
        if self.training and all('gt_instances' in sample
                                 for sample in batch_data_samples):
            return dict(denoising=self.dn_query_generator(batch_data_samples))
        return dict(denoising=None)

    def prepare_decoding(self,
                         mlvl_feats: Sequence[Tensor],
                         batch_data_samples: SampleList,
                         denoising: Optional[tuple] = _NOT_GIVEN) -> Dict:
        """Encoder, query selection and, in training mode with ground
        truth, the denoising queries (placed before the matching ones).

        ``denoising`` is :meth:`ground_truth_queries`' entry, made before
        the backbone ran; they are made here when it is not given (after the
        encoder, as the released code makes them; the encoder draws no
        random numbers).

        Returns:
            dict: The outputs of :meth:`encode`, ``enc_outputs_class``
            (bs, num_query, num_classes), ``enc_outputs_coord`` (bs,
            num_query, 4), ``dn_meta`` (None without denoising) and
            ``decoder_inputs`` (``query`` and ``reference_points`` of the
            num_dn + num_query queries, ``self_attn_mask`` (num_dn +
            num_query, num_dn + num_query) or None), as
            :meth:`CoQueryHeadMixin.prepare_decoding`.
        """
        enc = self.encode(mlvl_feats, batch_data_samples)
        if denoising is _NOT_GIVEN:
            denoising = self.ground_truth_queries(
                batch_data_samples)['denoising']
        dn_label_query, dn_bbox_query, dn_mask, dn_meta = \
            denoising or (None, ) * 4
        decoder_inputs, enc_outputs = self.transformer.pre_decoder(
            enc['memory'], enc['memory_mask'], enc['spatial_shapes'],
            self.cls_branches, self.reg_branches, dn_label_query,
            dn_bbox_query)
        return dict(
            enc,
            decoder_inputs=dict(decoder_inputs, self_attn_mask=dn_mask),
            dn_meta=dn_meta,
            **enc_outputs)

    def _hidden_states(self, plan: Dict, hidden_states: Tensor) -> Tensor:
        """The hidden states, tied to the label embedding when the batch
        has no ground truth: the embedding then gets no gradient, which
        DDP without ``find_unused_parameters`` rejects."""
        dn_meta = plan['dn_meta']
        if dn_meta is not None and dn_meta['num_denoising_queries'] == 0:
            hidden_states = hidden_states + \
                self.dn_query_generator.label_embedding.weight[0, 0] * 0.0
        return hidden_states

    def _extra_loss_inputs(self, outs: Dict) -> tuple:
        """DINO's ``loss_by_feat`` takes ``dn_meta`` last: the main,
        encoder and denoising losses (``dn_loss_*`` for the last layer,
        ``d{i}.dn_loss_*`` for the others) of :meth:`loss_by_outputs`."""
        if outs['dn_meta'] is None:
            raise RuntimeError('CoDINOHead losses need denoising queries: '
                               'run prepare_decoding in training mode on '
                               'samples with gt_instances')
        return (outs['dn_meta'], )

    def loss_dn(self, all_layers_denoising_cls_scores: Tensor,
                all_layers_denoising_bbox_preds: Tensor,
                batch_gt_instances: InstanceList, batch_img_metas: List[dict],
                dn_meta: Dict[str, int]) -> Tuple[Tensor, Tensor, Tensor]:
        """Denoising losses of all decoder layers at once.

        mmdet's ``DINOHead.loss_dn`` runs ``_loss_dn_single`` per layer:
        the same targets rebuilt for every layer, three losses per layer
        and two host reads per layer (the QualityFocalLoss positives'
        ``nonzero`` and the ``.item()`` of the box losses' average factor).
        The targets do not depend on the layer, so they are built once and
        each loss is evaluated element-wise over all layers
        (:meth:`losses_of_targets`, as for the matching part): the same
        values, each layer's sum over its own elements, the L1 weight
        applied before the sum (its last bits may differ); one mean of the
        average factors over processes instead of one per layer.
        ``batched_matching=False`` (or no denoising query) keeps mmdet's
        path.

        Args:
            all_layers_denoising_cls_scores (Tensor): (L, bs, num_dn,
                num_classes) logits of the denoising queries.
            all_layers_denoising_bbox_preds (Tensor): (L, bs, num_dn, 4)
                normalised (cx, cy, w, h).
            batch_gt_instances (list[InstanceData]): Ground truth per image.
            batch_img_metas (list[dict]): ``img_shape`` per image.
            dn_meta (dict): ``num_denoising_queries``,
                ``num_denoising_groups``.

        Returns:
            tuple[tuple[Tensor]]: ``loss_cls``, ``loss_bbox``, ``loss_iou``,
            each L 0-d tensors, one per decoder layer, as mmdet's lists.
        """
        cls_scores = all_layers_denoising_cls_scores
        bbox_preds = all_layers_denoising_bbox_preds
        if not self.batched_matching or cls_scores.size(2) == 0:
            return super().loss_dn(cls_scores, bbox_preds, batch_gt_instances,
                                   batch_img_metas, dn_meta)
        num_layers = cls_scores.size(0)
        (labels, label_weights, bbox_targets, bbox_weights, num_pos,
         num_neg) = self.get_dn_targets(batch_gt_instances, batch_img_metas,
                                        dn_meta)
        # the same targets for every layer: (L * bs * num_dn, ...)
        labels, label_weights, bbox_targets, bbox_weights = (
            torch.cat(t).repeat(num_layers, *([1] * (t[0].dim() - 1)))
            for t in (labels, label_weights, bbox_targets, bbox_weights))
        return self.losses_of_targets(
            cls_scores,
            bbox_preds, (labels, label_weights, bbox_targets, bbox_weights),
            cls_avg=np.full(num_layers,
                            num_pos * 1.0 + num_neg * self.bg_cls_weight),
            reg_avg=np.full(num_layers, float(num_pos)),
            factors=image_size_factors(batch_img_metas, bbox_preds))

    def _get_dn_targets_single(self, gt_instances: InstanceData,
                               img_meta: dict, dn_meta: Dict[str,
                                                             int]) -> tuple:
        """``DINOHead._get_dn_targets_single`` with the box targets and
        weights in the dtype of the ground truth (mmdet allocates them in
        the default dtype, where a float64 model's targets cannot go).

        Args:
            gt_instances (InstanceData): ``bboxes`` (n, 4) absolute
                (x1, y1, x2, y2), ``labels`` (n, ).
            img_meta (dict): ``img_shape`` (h, w).
            dn_meta (dict): ``num_denoising_queries``,
                ``num_denoising_groups``.

        Returns:
            tuple: ``labels`` (num_dn, ), ``label_weights`` (num_dn, ),
            ``bbox_targets`` (num_dn, 4) normalised (cx, cy, w, h),
            ``bbox_weights`` (num_dn, 4), ``pos_inds``, ``neg_inds``.
        """
        gt_bboxes = gt_instances.bboxes
        gt_labels = gt_instances.labels
        num_groups = dn_meta['num_denoising_groups']
        num_denoising_queries = dn_meta['num_denoising_queries']
        num_queries_each_group = int(num_denoising_queries / num_groups)
        # each group holds the positive queries of all targets, then as
        # many negative ones
        target_ids = torch.arange(
            len(gt_labels), dtype=torch.long,
            device=gt_bboxes.device).unsqueeze(0).repeat(num_groups, 1)
        pos_inds = (
            torch.arange(num_groups, dtype=torch.long,
                         device=gt_bboxes.device).unsqueeze(1) *
            num_queries_each_group + target_ids).flatten()
        pos_assigned_gt_inds = target_ids.flatten()
        neg_inds = pos_inds + num_queries_each_group // 2
        labels = gt_bboxes.new_full((num_denoising_queries, ),
                                    self.num_classes,
                                    dtype=torch.long)
        labels[pos_inds] = gt_labels[pos_assigned_gt_inds]
        label_weights = gt_bboxes.new_ones(num_denoising_queries)
        bbox_targets = gt_bboxes.new_zeros(num_denoising_queries, 4)
        bbox_weights = gt_bboxes.new_zeros(num_denoising_queries, 4)
        bbox_weights[pos_inds] = 1.0
        factor = image_size_factors([img_meta], gt_bboxes)
        bbox_targets[pos_inds] = bbox_xyxy_to_cxcywh(
            gt_bboxes / factor).repeat([num_groups, 1])
        return (labels, label_weights, bbox_targets, bbox_weights, pos_inds,
                neg_inds)

    def _predict_by_feat_single(self,
                                cls_score: Tensor,
                                bbox_pred: Tensor,
                                img_meta: dict,
                                rescale: bool = True) -> InstanceData:
        """Detections of one image, with the test-time NMS if configured.

        Without ``test_cfg.nms`` this is mmdet's top-``max_per_img`` over
        the (query, class) scores. With it (the released config: soft-NMS,
        IoU 0.8), as released: the top ``num_query`` pairs are decoded,
        clamped to the image, rescaled, passed through class-wise
        ``batched_nms`` and the first ``max_per_img`` are kept, with the
        scores NMS returns.

        Args:
            cls_score (Tensor): (num_queries, num_classes) logits.
            bbox_pred (Tensor): (num_queries, 4) normalised (cx, cy, w, h).
            img_meta (dict): ``img_shape`` (h, w), ``scale_factor`` (w, h).
            rescale (bool): Map boxes back to the original image.

        Returns:
            InstanceData: ``bboxes`` (n, 4) absolute (x1, y1, x2, y2),
            ``scores`` (n, ), ``labels`` (n, ).
        """
        nms_cfg = self.test_cfg.get('nms')
        if nms_cfg is None:
            return super()._predict_by_feat_single(cls_score, bbox_pred,
                                                   img_meta, rescale)
        max_per_img = self.test_cfg.get('max_per_img', self.num_query)
        img_h, img_w = img_meta['img_shape'][:2]
        scores, indexes = cls_score.sigmoid().view(-1).topk(
            min(self.num_query, cls_score.numel()))
        labels = indexes % self.num_classes
        bboxes = bbox_cxcywh_to_xyxy(bbox_pred[indexes // self.num_classes])
        bboxes[:, 0::2] = (bboxes[:, 0::2] * img_w).clamp(min=0, max=img_w)
        bboxes[:, 1::2] = (bboxes[:, 1::2] * img_h).clamp(min=0, max=img_h)
        if rescale:
            bboxes = bboxes / bboxes.new_tensor(
                img_meta['scale_factor']).repeat((1, 2))
        # mmcv's NMS kernels read float32 only: float64 boxes go to
        # any_dtype_nms (the same algorithm in float64)
        dets, keep = batched_nms(bboxes, scores, labels,
                                 any_dtype_nms_cfg(dict(nms=nms_cfg))['nms'])
        return InstanceData(
            bboxes=dets[:max_per_img, :4],
            scores=dets[:max_per_img, 4],
            labels=labels[keep][:max_per_img])
