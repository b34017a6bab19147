"""The batched auxiliary decoding and the vectorised auxiliary losses compute
what one decoder pass and one mmdet loss call per set and layer compute."""
import torch
from codetr_testing import build_model, make_batch, tiny_model_cfg

from projects.codetr.models import build_aux_targets


def _setup():
    model = build_model(tiny_model_cfg(dec_layers=2)).train()
    inputs, samples = make_batch(model)
    x = model.extract_feat(inputs)
    head = model.query_head
    enc = head.encode(x, samples)
    pyramid = head.memory_to_pyramid(enc['memory'], x)
    _, pos_coords = model.aux_heads_loss(pyramid, samples)
    metas = [s.metainfo for s in samples]
    torch.manual_seed(0)
    targets = [
        build_aux_targets(p, metas, head.num_classes) for p in pos_coords
    ]
    return model, head, enc, targets, metas


def _decode(head, enc, targets, head_ids):
    return head.transformer.forward_aux(
        [t.coords for t in targets], [t.feats for t in targets],
        enc['memory'], enc['memory_mask'], enc['spatial_shapes'],
        enc['level_start_index'], enc['valid_ratios'], head.reg_branches,
        head_ids=head_ids)


def test_one_pass_equals_one_pass_per_set():
    _, head, enc, targets, _ = _setup()
    assert len(targets) == 2
    hidden, refs = _decode(head, enc, targets, None)
    sizes = [t.coords.size(1) for t in targets]
    for k, target in enumerate(targets):
        alone_hidden, alone_refs = _decode(head, enc, [target], [k])
        part = hidden.split(sizes, dim=2)[k]
        torch.testing.assert_close(part, alone_hidden, rtol=1e-4, atol=1e-5)
        for ref, alone in zip(refs, alone_refs):
            torch.testing.assert_close(
                ref.split(sizes, dim=1)[k], alone, rtol=1e-4, atol=1e-5)


def test_vectorised_losses_equal_per_layer_mmdet_calls():
    from mmdet.structures.bbox import bbox_cxcywh_to_xyxy
    _, head, enc, targets, metas = _setup()
    hidden, refs = _decode(head, enc, targets, None)
    cls_scores, bbox_preds = head(hidden, refs)
    losses = head.loss_aux_by_feat(cls_scores, bbox_preds, targets, metas)
    assert len(losses) == 3 * 2 * 2
    sizes = [t.coords.size(1) for t in targets]
    img_hw = torch.tensor([m['img_shape'] for m in metas], dtype=torch.float)
    for k, t in enumerate(targets):
        cls_k = cls_scores.split(sizes, dim=2)[k]
        box_k = bbox_preds.split(sizes, dim=2)[k]
        n = t.labels.size(1)
        factors = img_hw[:, [1, 0, 1, 0]].repeat_interleave(n, dim=0)
        avg = t.bbox_weights[..., 0].sum().clamp(min=1).item()
        for layer in range(2):
            prefix = 'd0.' if layer == 0 else ''
            pred = box_k[layer].reshape(-1, 4)
            expected = {
                'cls': head.loss_cls(cls_k[layer].reshape(-1, 3),
                                     t.labels.reshape(-1),
                                     t.label_weights.reshape(-1),
                                     avg_factor=avg),
                'bbox': head.loss_bbox(pred, t.bbox_targets.reshape(-1, 4),
                                       t.bbox_weights.reshape(-1, 4),
                                       avg_factor=avg),
                'iou': head.loss_iou(
                    bbox_cxcywh_to_xyxy(pred) * factors,
                    bbox_cxcywh_to_xyxy(t.bbox_targets.reshape(-1, 4)) *
                    factors, t.bbox_weights.reshape(-1, 4), avg_factor=avg),
            }
            for name, value in expected.items():
                got = losses[f'{prefix}loss_{name}_aux{k}']
                torch.testing.assert_close(got, value, rtol=1e-5, atol=1e-6)
                assert value.item() > 0
