"""mmdet's RPN proposals with everything before NMS done for the batch.

``RPNHead.predict_by_feat`` runs ``_predict_by_feat_single`` per image: per
level a sigmoid, a sort for the ``nms_pre`` best and three index ops, then
a decode, the minimum-size filter (a host read and a boolean index) and
NMS. :func:`batched_rpn_proposals` scores, ranks and decodes all images in
one pass per level and reads the minimum-size filter's outcome once for
the batch; each image then goes through mmdet's own ``_bbox_post_process``
with exactly the boxes, scores and level ids mmdet hands it, so the
proposals are mmdet's, tensor for tensor.

NMS stays per image: one ``batched_nms`` over all images (with the image
in the group ids) would shift each image's boxes by another offset than
mmdet's, which rounds the coordinates the IoUs are computed from
differently, and above ``split_thr`` boxes it takes mmcv's per-group loop,
whose order among equal scores differs; neither keeps the result mmdet's.
Within an image, the configs set ``split_thr`` above its levels x
``nms_pre`` boxes, so that mmcv's one-call path (the same level-offset
boxes as its loop, without the loop's read per level) keeps them: the
same proposals in the same order unless two scores are exactly equal
(``tests/models/task_modules/test_batched_rpn.py``; docs/performance.md).
"""
import copy
from typing import List

import torch
from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder
from mmdet.utils import InstanceList
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData
from torch import Tensor

from ..device_copies import image_size_factors


def supports_batched_proposals(head, score_factors, rescale: bool,
                               with_nms: bool) -> bool:
    """Whether :func:`batched_rpn_proposals` computes what
    ``RPNHead.predict_by_feat`` computes: sigmoid scores of one channel,
    delta boxes, no rescaling, no score factors, with NMS."""
    return (score_factors is None and not rescale and with_nms
            and head.use_sigmoid_cls and head.cls_out_channels == 1
            and isinstance(head.bbox_coder, DeltaXYWHBBoxCoder))


def _ranked_level(score: Tensor, delta: Tensor, priors: Tensor,
                  nms_pre: int) -> tuple:
    """One level's ``nms_pre`` best anchors of every image, in mmdet's
    order (the same descending ``sort``, now of each row).

    Args:
        score (Tensor): (B, N) sigmoid scores.
        delta (Tensor): (B, N, 4) predicted deltas.
        priors (Tensor): (N, 4) anchors (x1, y1, x2, y2).
        nms_pre (int): How many to keep; <= 0 or >= N keeps all.

    Returns:
        tuple[Tensor, Tensor, Tensor]: (B, K) scores, (B, K, 4) deltas,
        (B, K, 4) anchors, K = min(nms_pre, N) (N when not positive).
    """
    if 0 < nms_pre < score.size(1):
        ranked, order = score.sort(dim=1, descending=True)
        order = order[:, :nms_pre]
        return (ranked[:, :nms_pre],
                delta.gather(1, order[:, :, None].expand(-1, -1, 4)),
                priors[order])
    return score, delta, priors.expand(score.size(0), -1, -1)


def batched_rpn_proposals(head, cls_scores: List[Tensor],
                          bbox_preds: List[Tensor],
                          batch_img_metas: List[dict],
                          cfg: ConfigDict) -> InstanceList:
    """``RPNHead.predict_by_feat(..., rescale=False)`` of all images (check
    :func:`supports_batched_proposals` first).

    Args:
        head (RPNHead): Its prior generator, ``bbox_coder`` and
            ``_bbox_post_process``.
        cls_scores (list[Tensor]): Per level (B, num_anchors, H, W) logits.
        bbox_preds (list[Tensor]): Per level (B, num_anchors * 4, H, W).
        batch_img_metas (list[dict]): ``img_shape`` (h, w) per image.
        cfg (ConfigDict): ``nms_pre``, ``min_bbox_size``, ``nms``,
            ``max_per_img``.

    Returns:
        list[InstanceData]: Per image ``bboxes`` (n, 4) (x1, y1, x2, y2) in
        the input frame, ``scores`` (n, ), ``labels`` (n, ) zeros, in
        descending score order, n <= ``max_per_img``: mmdet's.
    """
    num_imgs = cls_scores[0].size(0)
    mlvl_priors = head.prior_generator.grid_priors(
        [score.shape[-2:] for score in cls_scores],
        dtype=cls_scores[0].dtype,
        device=cls_scores[0].device)
    nms_pre = cfg.get('nms_pre', -1)

    scores, deltas, priors, level_ids = [], [], [], []
    for level, (cls_score, bbox_pred, level_priors) in enumerate(
            zip(cls_scores, bbox_preds, mlvl_priors)):
        # (B, C, H, W) -> (B, H * W * C), as mmdet's per-image permute
        score = cls_score.detach().permute(0, 2, 3, 1).reshape(
            num_imgs, -1).sigmoid()
        delta = bbox_pred.detach().permute(0, 2, 3, 1).reshape(
            num_imgs, -1, 4)
        score, delta, level_priors = _ranked_level(score, delta,
                                                   level_priors, nms_pre)
        scores.append(score)
        deltas.append(delta)
        priors.append(level_priors)
        level_ids.append(
            score.new_full((score.size(1), ), level, dtype=torch.long))
    scores = torch.cat(scores, 1)
    level_ids = torch.cat(level_ids)
    # decode is element-wise: one call for the batch gives each image's
    # values; the clip to each image's own shape follows
    bboxes = head.bbox_coder.decode(
        torch.cat(priors, 1).flatten(0, 1),
        torch.cat(deltas, 1).flatten(0, 1),
        max_shape=None).view(num_imgs, -1, 4)
    if head.bbox_coder.clip_border:
        # delta2bbox's clamp_(min=0, max=w) of x, (min=0, max=h) of y
        bounds = image_size_factors(batch_img_metas, bboxes)
        bboxes = torch.minimum(bboxes.clamp(min=0), bounds[:, None, :])

    cfg = copy.deepcopy(cfg)
    min_bbox_size = cfg.get('min_bbox_size', -1)
    keep_all = [True] * num_imgs
    if min_bbox_size >= 0:
        # mmdet's filter, every image's ``valid_mask.all()`` in one read
        valid = ((bboxes[..., 2] - bboxes[..., 0] > min_bbox_size) &
                 (bboxes[..., 3] - bboxes[..., 1] > min_bbox_size))
        keep_all = valid.all(dim=1).tolist()
    cfg.min_bbox_size = -1  # applied here, not again per image
    proposals = []
    for img_id, meta in enumerate(batch_img_metas):
        results = InstanceData(
            bboxes=bboxes[img_id], scores=scores[img_id], level_ids=level_ids)
        if not keep_all[img_id]:
            # one nonzero for the three fields (a mask reads once per field)
            results = results[valid[img_id].nonzero().squeeze(1)]
        proposals.append(
            head._bbox_post_process(results, cfg, rescale=False,
                                    img_meta=meta))
    return proposals
