"""What every Co-DETR query head shares, whatever its decoder.

A Co-DETR query head (Co-Deformable-DETR's, Co-DINO's) owns its transformer,
feeds the encoder memory to the auxiliary heads as a pyramid and decodes the
auxiliary heads' positives as customised positive queries with one-to-many
targets (docs/design.md, data flow and positive queries).
:class:`CoQueryHeadMixin` implements
those parts once; each head combines it with the mmdet head whose matching,
losses and post-processing it reuses (``DeformableDETRHead``, ``DINOHead``).
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmdet.models.layers import inverse_sigmoid
from mmdet.structures import SampleList
from mmengine.structures import InstanceData
from torch import Tensor, nn

from ..positive_coords import (AuxQueryTargets, PositiveCoords,
                               build_aux_targets)
from ..precision.dtypes import at_least_float32
from .aux_query_losses import AuxQueryLossMixin
from .layer_branches import layer_predictions


class CoQueryHeadMixin(AuxQueryLossMixin):
    """Encoder pass, decoder passes, auxiliary pyramid and the losses of
    a training step.

    Mixed into a DETR head of mmdet (listed first among the bases). The host
    class provides :meth:`prepare_decoding`, ``transformer`` (with
    ``pre_transformer``, ``forward_encoder``, ``forward_decoder``,
    ``forward_aux`` and ``forward_with_aux``), ``cls_branches``,
    ``reg_branches``, ``loss_cls``/``loss_bbox``/``loss_iou``,
    ``num_classes``, ``sync_cls_avg_factor`` and the attributes set by
    :meth:`_init_co_attrs`.

    Class attributes:
        ref_eps (float): ``eps`` of the inverse sigmoid applied to the
            reference boxes before the regression offsets are added (1e-5 in
            Deformable DETR, 1e-3 in DINO).
    """

    ref_eps: float = 1e-5

    def _init_co_attrs(self, num_query: int, max_pos_coords: int,
                       lambda_1: float, with_aux_pyramid: bool,
                       joint_decoding: bool, batched_branches: bool) -> None:
        """Store the Co-DETR settings shared by all query heads."""
        self.num_query = num_query
        self.max_pos_coords = max_pos_coords
        self.lambda_1 = lambda_1
        self.with_aux_pyramid = with_aux_pyramid
        self.joint_decoding = joint_decoding
        self.batched_branches = batched_branches

    def forward(self, hidden_states: Tensor,
                references: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
        """Class logits and boxes of every decoder layer: mmdet's
        ``DeformableDETRHead.forward`` with the head's ``ref_eps``, all
        layers at once with ``batched_branches``
        (:func:`.layer_branches.layer_predictions`).

        Args:
            hidden_states (Tensor): (num_layers, bs, num_queries, dim).
            references (Sequence[Tensor]): ``num_layers + 1`` reference
                boxes, each (bs, num_queries, 4) normalised (cx, cy, w, h);
                layer l refines ``references[l]``, the last is not used.

        Returns:
            tuple[Tensor, Tensor]: Logits (num_layers, bs, num_queries,
            cls_out_channels) and boxes (num_layers, bs, num_queries, 4),
            normalised (cx, cy, w, h).
        """
        return layer_predictions(
            self.cls_branches,
            self.reg_branches,
            hidden_states,
            references,
            eps=self.ref_eps,
            batched=self.batched_branches)

    def _init_aux_pyramid(self) -> None:
        """The stride-2 conv + GN that adds the coarsest pyramid level."""
        if self.with_aux_pyramid:
            dims = self.embed_dims
            self.downsample = nn.Sequential(
                nn.Conv2d(dims, dims, kernel_size=3, stride=2, padding=1),
                nn.GroupNorm(32, dims))

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

    def ground_truth_queries(self, batch_data_samples: SampleList) -> Dict:
        """Decoder inputs made from the ground truth alone, before the
        backbone runs (none here; Co-DINO's denoising queries).

        :meth:`CoDETR.loss` calls it first and hands the result to
        :meth:`prepare_decoding` as keyword arguments: what it reads back
        from the device then finds the GPU with no work queued, instead of
        waiting for the backbone and the encoder. Where the backbone or
        neck draw random numbers in training (drop path), it does not:
        :meth:`prepare_decoding` makes them after the encoder, so that the
        random draws keep their order.
        """
        return {}

    def prepare_decoding(self, mlvl_feats: Sequence[Tensor],
                         batch_data_samples: SampleList, **kwargs) -> Dict:
        """Encoder and query selection: everything up to the decoder
        (implemented by each head); ``kwargs`` are the output of
        :meth:`ground_truth_queries` (made here when not given).

        Returns:
            dict: The outputs of :meth:`encode`, the encoder outputs for the
            loss (``enc_outputs_class``, ``enc_outputs_coord``), the head's
            own entries (e.g. ``dn_meta``) and ``decoder_inputs``: the main
            queries' keyword arguments of the transformer's
            ``forward_decoder`` (``query``, ``reference_points``, optionally
            ``query_pos`` and ``self_attn_mask``).
        """
        raise NotImplementedError

    def forward_transformer(self, mlvl_feats: Sequence[Tensor],
                            batch_data_samples: SampleList) -> Dict:
        """Encoder, query selection and decoder for the main queries.

        Returns:
            dict: :meth:`prepare_decoding`'s entries but ``decoder_inputs``,
            plus ``hidden_states`` (num_layers, bs, num_queries, dim) and
            ``references`` (list of num_layers + 1 tensors (bs,
            num_queries, 4), normalised (cx, cy, w, h)).
        """
        plan = self.prepare_decoding(mlvl_feats, batch_data_samples)
        hidden_states, references = self.transformer.forward_decoder(
            **plan['decoder_inputs'],
            **self._memory_inputs(plan),
            reg_branches=self.reg_branches)
        return self._decoded(plan, hidden_states, references)

    @staticmethod
    def _memory_inputs(plan: Dict) -> Dict:
        """The memory and its layout, as every decoder pass takes them."""
        keys = ('memory', 'memory_mask', 'spatial_shapes',
                'level_start_index', 'valid_ratios')
        return {key: plan[key] for key in keys}

    def _decoded(self, plan: Dict, hidden_states: Tensor,
                 references: List[Tensor]) -> Dict:
        """:meth:`forward_transformer`'s output from a plan and the main
        queries' decoder outputs."""
        outs = {k: v for k, v in plan.items() if k != 'decoder_inputs'}
        return dict(
            outs,
            hidden_states=self._hidden_states(plan, hidden_states),
            references=references)

    def _hidden_states(self, plan: Dict, hidden_states: Tensor) -> Tensor:
        """The decoder's hidden states as the branches take them (a head
        may adjust them; here unchanged)."""
        return hidden_states

    def memory_to_pyramid(self, memory: Tensor,
                          mlvl_feats: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        """Turn the encoder memory into the auxiliary heads' pyramid.

        The memory is split back into its levels and a stride-2
        ``downsample`` of the last level is appended (docs/design.md, data
        flow). Nothing is
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

    def loss_by_outputs(
            self,
            outs: Dict,
            batch_data_samples: SampleList,
            predictions: Optional[Tuple[Tensor, Tensor]] = None
    ) -> Dict[str, Tensor]:
        """Main and encoder losses from :meth:`forward_transformer`'s output
        (mmdet's ``loss`` of the head, the branches applied here unless
        given).

        Args:
            outs (dict): Output of ``forward_transformer``.
            batch_data_samples (list[DetDataSample]): Ground truth and metas.
            predictions (tuple[Tensor, Tensor], optional): The head's
                ``forward`` of ``outs``, when already computed: logits
                (num_layers, bs, num_queries, num_classes) and boxes
                (num_layers, bs, num_queries, 4).

        Returns:
            dict[str, Tensor]: The head's one-to-one losses.
        """
        if predictions is None:
            predictions = self(outs['hidden_states'], outs['references'])
        batch_gt_instances = [s.gt_instances for s in batch_data_samples]
        batch_img_metas = [s.metainfo for s in batch_data_samples]
        return self.loss_by_feat(*predictions, outs['enc_outputs_class'],
                                 outs['enc_outputs_coord'],
                                 batch_gt_instances, batch_img_metas,
                                 *self._extra_loss_inputs(outs))

    def _extra_loss_inputs(self, outs: Dict) -> tuple:
        """Arguments of the head's ``loss_by_feat`` after the image metas
        (none here; DINO's ``dn_meta``)."""
        return ()

    def loss_by_feat(self, all_layers_cls_scores: Tensor,
                     all_layers_bbox_preds: Tensor, enc_cls_scores: Tensor,
                     enc_bbox_preds: Tensor, *args, **kwargs) -> Dict:
        """mmdet's main and encoder losses, computed in fp32 (float64 for a
        float64 model).

        Under autocast the branches output fp16; the focal matching cost
        ``log(1 - p + 1e-12)`` then underflows to ``-inf`` and the Hungarian
        solver rejects the cost matrix (MD#11416). Losses and matching
        therefore see fp32 predictions.
        """
        # no encoder outputs without query selection (DAB-Deformable-DETR)
        enc_cls_scores, enc_bbox_preds = (
            None if t is None else at_least_float32(t)
            for t in (enc_cls_scores, enc_bbox_preds))
        return super().loss_by_feat(
            at_least_float32(all_layers_cls_scores),
            at_least_float32(all_layers_bbox_preds), enc_cls_scores,
            enc_bbox_preds, *args, **kwargs)

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

    def loss_with_aux(
        self, plan: Dict, pos_coords: Sequence[PositiveCoords],
        batch_data_samples: SampleList
    ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        """Main, encoder and positive-query losses of a training step.

        With ``joint_decoding`` (the default) the main queries and all
        positive-query sets are decoded in one decoder pass and go through
        the branches once (:meth:`~.AuxQueryDecoding.forward_with_aux`:
        each block of queries is decoded as if alone); otherwise the main
        queries are decoded first and the sets in a second pass
        (:meth:`loss_aux`), as the released code does. Either way the
        losses are the same up to the order of floating-point sums.

        Args:
            plan (dict): Output of :meth:`prepare_decoding`.
            pos_coords (Sequence[PositiveCoords]): Positives of auxiliary
                heads 0..K-1 (none: the main queries alone).
            batch_data_samples (list[DetDataSample]): Ground truth and metas.

        Returns:
            tuple[dict, dict]: The one-to-one losses
            (:meth:`loss_by_outputs`) and the positive queries' losses
            (:meth:`loss_aux`).
        """
        if not (pos_coords and self.joint_decoding):
            hidden_states, references = self.transformer.forward_decoder(
                **plan['decoder_inputs'],
                **self._memory_inputs(plan),
                reg_branches=self.reg_branches)
            outs = self._decoded(plan, hidden_states, references)
            return (self.loss_by_outputs(outs, batch_data_samples),
                    self.loss_aux(outs, pos_coords, batch_data_samples))
        batch_img_metas = [s.metainfo for s in batch_data_samples]
        targets = self._aux_targets(pos_coords, batch_img_metas)
        hidden_states, references = self.transformer.forward_with_aux(
            plan['decoder_inputs'], [t.coords for t in targets],
            [t.feats for t in targets],
            **self._memory_inputs(plan),
            reg_branches=self.reg_branches)
        hidden_states = self._hidden_states(plan, hidden_states)
        # the branches once for all queries (they act per query)
        all_cls_scores, all_bbox_preds = self(hidden_states, references)
        num_main = plan['decoder_inputs']['query'].size(1)
        outs = {k: v for k, v in plan.items() if k != 'decoder_inputs'}
        outs.update(
            hidden_states=hidden_states[:, :, :num_main],
            references=[ref[:, :num_main] for ref in references])
        main_losses = self.loss_by_outputs(
            outs, batch_data_samples,
            (all_cls_scores[:, :, :num_main], all_bbox_preds[:, :, :num_main]))
        aux_losses = self.loss_aux_by_feat(all_cls_scores[:, :, num_main:],
                                           all_bbox_preds[:, :, num_main:],
                                           targets, batch_img_metas)
        return main_losses, aux_losses

    def _aux_targets(self, pos_coords: Sequence[PositiveCoords],
                     batch_img_metas: List[dict]) -> List[AuxQueryTargets]:
        """Queries and targets of every positive set (docs/design.md,
        positive queries)."""
        return [
            build_aux_targets(coords, batch_img_metas, self.num_classes,
                              self.max_pos_coords) for coords in pos_coords
        ]

    def loss_aux(self, enc: Dict, pos_coords: Sequence[PositiveCoords],
                 batch_data_samples: SampleList) -> Dict[str, Tensor]:
        """One-to-many losses of the customised positive queries, decoded
        in a pass of their own (docs/design.md, positive queries): the
        second pass of :meth:`loss_with_aux` with ``joint_decoding=False``,
        and the entry point for callers that decoded the main queries
        already.

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
            others (docs/design.md, loss weights).
        """
        if not pos_coords:
            return dict()
        batch_img_metas = [s.metainfo for s in batch_data_samples]
        targets = self._aux_targets(pos_coords, batch_img_metas)
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
        return self.predict_by_feat(
            *self.last_layer_predictions(outs), batch_img_metas,
            rescale=rescale)

    def last_layer_predictions(self, outs: Dict) -> Tuple[Tensor, Tensor]:
        """Class logits and boxes of the last decoder layer (tensors only:
        what a CUDA graph of the inference captures).

        Args:
            outs (dict): Output of :meth:`forward_transformer`.

        Returns:
            tuple[Tensor, Tensor]: (1, bs, num_query, num_classes) logits and
            (1, bs, num_query, 4) boxes, normalised (cx, cy, w, h).
        """
        # Only the last layer is post-processed: skip the other branches.
        last = outs['hidden_states'][-1:]
        refs = outs['references']
        layer = len(refs) - 2
        cls_scores = self.cls_branches[layer](last)
        coords = self.reg_branches[layer](last)
        # The post-processing gets at least float32 (float64 stays) under
        # autocast too: Co-DINO's soft-NMS runs mmcv's CPU kernel, which
        # reads float32 only, and a half-precision box (11-bit mantissa)
        # would round its edges by up to 0.5 px at 1000 px.
        dtype = torch.promote_types(coords.dtype, torch.float32)
        cls_scores, coords = cls_scores.to(dtype), coords.to(dtype)
        coords = (coords + inverse_sigmoid(
            refs[layer].to(dtype), eps=self.ref_eps)).sigmoid()
        return cls_scores, coords
