"""An ONNX-exportable inference wrapper around a ``CoDETR`` detector.

``CoDETR.predict`` reads the padding of each image from the data samples'
metainfo (Python ints), which a traced graph would bake in. The wrapper
takes the valid size of every image as a tensor instead and computes, inside
the graph, what mmdet's ``DeformableDETR.pre_transformer`` computes from the
metainfo: the padding mask of every level, the positional encodings and the
valid ratios. Everything else is the detector's own modules and stage
functions (backbone, neck, encoder, two-stage query selection, decoder,
branches); only the top-k post-processing of
``DETRHead._predict_by_feat_single`` is written here, batched and with the
image sizes as tensors.

Multi-scale deformable attention runs its PyTorch path (mmcv's
``multi_scale_deformable_attn_pytorch``, i.e. ``grid_sample``) on CPU
tensors, so an export on CPU contains no mmcv custom op.
"""
from typing import List, Sequence, Tuple

import torch
from mmdet.models.layers import inverse_sigmoid
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy
from torch import Tensor, nn


def check_exportable(detector: nn.Module) -> None:
    """Raise a ``ValueError`` unless ``detector`` can be exported.

    Args:
        detector (nn.Module): A built ``CoDETR``.

    Raises:
        ValueError: ``eval_module`` is not ``'detr'`` (the auxiliary heads
            are not part of the exported graph).
    """
    eval_module = getattr(detector, 'eval_module', None)
    if eval_module != 'detr':
        raise ValueError(
            f"only eval_module='detr' (the query head) can be exported, but "
            f'the config has model.eval_module={eval_module!r}. The '
            'auxiliary heads are training-time helpers; export with '
            "--cfg-options model.eval_module=detr.")


class CoDETROnnxModel(nn.Module):
    """Backbone, neck and query head of a ``CoDETR``, with in-graph masks.

    Args:
        detector (nn.Module): A ``CoDETR`` with ``eval_module='detr'``, in
            eval mode.
        max_per_img (int, optional): Detections per image; defaults to the
            query head's ``test_cfg.max_per_img`` (as ``predict``).
    """

    def __init__(self, detector: nn.Module, max_per_img: int = None) -> None:
        super().__init__()
        check_exportable(detector)
        self.detector = detector
        head = detector.query_head
        if max_per_img is None:
            max_per_img = (head.test_cfg or {}).get('max_per_img',
                                                    head.num_query)
        candidates = head.num_query * head.num_classes
        if max_per_img > candidates:
            raise ValueError(
                f'max_per_img={max_per_img} exceeds num_query x num_classes '
                f'= {candidates}; lower query_head.test_cfg.max_per_img.')
        self.max_per_img = int(max_per_img)

    @staticmethod
    def level_masks(img_sizes: Tensor, batch_hw: Tensor,
                    feats: Sequence[Tensor]) -> List[Tensor]:
        """Padding masks of every level, True on padding.

        Equal to mmdet's: a (bs, H, W) mask with 0 inside each image's valid
        size, resized to each level with ``F.interpolate`` (mode
        ``'nearest'``: source index ``floor(i * (in / out))`` in float32,
        clamped to ``in - 1``), computed per row and column from tensors.

        Args:
            img_sizes (Tensor): (bs, 2) valid (h, w) of each image, int.
            batch_hw (Tensor): (2, ) padded input size (H, W), int64.
            feats (Sequence[Tensor]): Neck maps, each (bs, dim, h_l, w_l).

        Returns:
            list[Tensor]: Bool masks, each (bs, h_l, w_l).
        """
        sizes = img_sizes.to(torch.float32)
        masks = []
        for feat in feats:
            feat_hw = torch._shape_as_tensor(feat)[2:]
            src = []
            for axis in range(2):
                n_in = batch_hw[axis].to(torch.float32)
                n_out = feat_hw[axis]
                index = torch.arange(n_out).to(torch.float32)
                index = torch.floor(index * (n_in / n_out.to(torch.float32)))
                # shapes are read as CPU tensors; the sizes live with the
                # images (on the GPU when the model runs there)
                src.append(torch.minimum(index, n_in - 1).to(sizes.device))
            pad_rows = src[0][None, :] >= sizes[:, :1]  # (bs, h_l)
            pad_cols = src[1][None, :] >= sizes[:, 1:]  # (bs, w_l)
            masks.append(pad_rows[:, :, None] | pad_cols[:, None, :])
        return masks

    def pre_transformer(self, feats: Sequence[Tensor], batch_hw: Tensor,
                        img_sizes: Tensor) -> Tuple[dict, dict]:
        """mmdet's ``DeformableDETR.pre_transformer`` with tensor sizes.

        Returns:
            tuple[dict, dict]: Keyword arguments of the transformer's
            ``forward_encoder`` and the decoder inputs (``memory_mask``
            (bs, num_feat_points), ``spatial_shapes`` (num_levels, 2) as
            (h, w), ``level_start_index`` (num_levels, ), ``valid_ratios``
            (bs, num_levels, 2)).
        """
        transformer = self.detector.query_head.transformer
        masks = self.level_masks(img_sizes, batch_hw, feats)
        feat, feat_pos, memory_mask = transformer.flatten_levels(feats, masks)
        # (num_levels, 2), int64, on the features' device: mmcv's CUDA
        # deformable attention reads it there
        spatial_shapes = torch.stack(
            [torch._shape_as_tensor(f)[2:] for f in feats]).to(feats[0].device)
        level_start_index = torch.cat((spatial_shapes.new_zeros(
            (1, )), spatial_shapes.prod(1).cumsum(0)[:-1]))
        valid_ratios = torch.stack(
            [transformer.get_valid_ratio(m) for m in masks], 1)
        return transformer.stage_inputs(feat, feat_pos, memory_mask,
                                        spatial_shapes, level_start_index,
                                        valid_ratios)

    def forward(self, inputs: Tensor,
                img_sizes: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Detections of the query head, as ``predict(rescale=False)``.

        Args:
            inputs (Tensor): (bs, 3, H, W) normalised, padded images (the
                output of the model's data preprocessor).
            img_sizes (Tensor): (bs, 2) int64 valid (h, w) of every image
                inside the padded batch (``img_shape`` of its metainfo).

        Returns:
            tuple[Tensor, Tensor, Tensor]: ``boxes`` (bs, k, 4) absolute
            (x1, y1, x2, y2) in input pixels, clamped to each image's valid
            size; ``scores`` (bs, k) sigmoid scores, descending; ``labels``
            (bs, k) int64 class indices; k = ``max_per_img``.
        """
        head = self.detector.query_head
        transformer = head.transformer
        feats = self.detector.extract_feat(inputs)
        batch_hw = torch._shape_as_tensor(inputs)[2:]
        encoder_inputs, enc = self.pre_transformer(feats, batch_hw,
                                                   img_sizes)
        memory = transformer.forward_encoder(**encoder_inputs)['memory']
        # mixed-selection content queries (two-stage transformers only)
        query_embedding = getattr(head, 'query_embedding', None)
        decoder_inputs, _ = transformer.pre_decoder(
            memory, enc['memory_mask'], enc['spatial_shapes'],
            head.cls_branches, head.reg_branches,
            None if query_embedding is None else query_embedding.weight)
        hidden_states, refs = transformer.forward_decoder(
            **decoder_inputs,
            memory=memory,
            **enc,
            reg_branches=head.reg_branches)
        # As CoDeformDETRHead.predict_by_outputs: last layer only.
        layer = len(refs) - 2
        last = hidden_states[-1]
        logits = head.cls_branches[layer](last)  # (bs, num_query, C)
        coords = (head.reg_branches[layer](last) +
                  inverse_sigmoid(refs[layer], eps=head.ref_eps)).sigmoid()
        return self.postprocess(logits, coords, img_sizes)

    def postprocess(self, logits: Tensor, coords: Tensor,
                    img_sizes: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Batched ``DETRHead._predict_by_feat_single`` (sigmoid branch).

        Args:
            logits (Tensor): (bs, num_query, num_classes).
            coords (Tensor): (bs, num_query, 4) normalised (cx, cy, w, h).
            img_sizes (Tensor): (bs, 2) valid (h, w).

        Returns:
            tuple[Tensor, Tensor, Tensor]: As :meth:`forward`.
        """
        num_classes = logits.size(-1)
        scores, index = logits.sigmoid().flatten(1).topk(
            self.max_per_img, dim=1)
        labels = index % num_classes
        query = torch.div(index, num_classes, rounding_mode='floor')
        boxes = torch.gather(coords, 1, query[..., None].expand(-1, -1, 4))
        wh = img_sizes.flip(-1).to(boxes.dtype)  # (bs, 2) as (w, h)
        factor = torch.cat([wh, wh], -1)[:, None]  # (bs, 1, 4)
        boxes = torch.minimum(
            (bbox_cxcywh_to_xyxy(boxes) * factor).clamp(min=0), factor)
        return boxes, scores, labels


def build_onnx_wrapper(detector: nn.Module) -> CoDETROnnxModel:
    """Wrap a built ``CoDETR`` (set to eval mode) for export."""
    return CoDETROnnxModel(detector.eval())
