"""The batched one-to-one losses equal mmdet's per-layer, per-image ones.

``BatchedMatchingDETRHead`` matches all decoder layers at once;
the reference is mmdet's own path of the same head
(``batched_matching=False``), run on the same transformer outputs of the
golden parity models and batches: Co-Deformable-DETR (two images,
focal loss, encoder proposals of every feature point) and Co-DINO (three
images, the last without boxes, QualityFocalLoss, denoising queries).
"""
import codino_parity_data
import numpy as np
import parity_data
import pytest
import torch
from mmdet.models.dense_heads import DETRHead

CASES = {
    'co_deformable_detr': (parity_data.filled_model,
                           lambda: parity_data.golden_batch(2)),
    'co_dino': (codino_parity_data.filled_model,
                lambda: codino_parity_data.golden_batch('three')),
}


@pytest.fixture(scope='module', params=sorted(CASES))
def head_outputs(request):
    """(query head, transformer outputs, data samples) of a golden batch."""
    make_model, make_batch = CASES[request.param]
    model, _ = make_model()
    inputs, samples = make_batch()
    model.train()  # Co-DINO builds its denoising queries in training
    torch.manual_seed(0)  # and draws them at random
    outs = model.query_head.forward_transformer(
        model.extract_feat(inputs), samples)
    return model.query_head, outs, samples


def losses_and_grads(head, outs, samples, batched: bool):
    head.batched_matching = batched
    try:
        losses = head.loss_by_outputs(outs, samples)
    finally:
        head.batched_matching = True
    total = sum(losses.values())
    grad, = torch.autograd.grad(total, outs['hidden_states'],
                                retain_graph=True)
    return losses, grad


def test_losses_and_gradients_equal_mmdets(head_outputs):
    head, outs, samples = head_outputs
    ours, our_grad = losses_and_grads(head, outs, samples, batched=True)
    ref, ref_grad = losses_and_grads(head, outs, samples, batched=False)
    assert sorted(ours) == sorted(ref)
    for key in ref:
        # mmdet's classification losses have shape (1, ) (a tensor average
        # factor), ours are scalars like the others
        assert ours[key].numel() == ref[key].numel() == 1, key
        ours[key], ref[key] = ours[key].reshape(()), ref[key].reshape(())
        # the same terms summed in another order (the L1 weight 5 applied
        # before the sum instead of after): float32 rounding. Not equality:
        # the order of a CPU reduction depends on the CPU's vector width
        torch.testing.assert_close(
            ours[key], ref[key], rtol=1e-6, atol=0, msg=key)
    # float32 rounding of the L1 term and of sums taken in another order
    scale = ref_grad.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(
        our_grad, ref_grad, rtol=1e-5, atol=1e-6 * scale)


def test_targets_equal_mmdets_per_layer_targets(head_outputs):
    head, outs, samples = head_outputs
    gts = [s.gt_instances for s in samples]
    metas = [s.metainfo for s in samples]
    layers = len(outs['references']) - 1
    cls_scores, bbox_preds = head(outs['hidden_states'], outs['references'])
    num_queries = head.num_query  # matching queries only
    cls_scores = cls_scores[:, :, -num_queries:].float()
    bbox_preds = bbox_preds[:, :, -num_queries:].float()
    labels, label_weights, bbox_targets, bbox_weights, num_pos = \
        head.hungarian_targets(cls_scores, bbox_preds, gts, metas)
    bs = len(samples)
    for layer in range(layers):
        ref = DETRHead.get_targets(head, list(cls_scores[layer]),
                                   list(bbox_preds[layer]), gts, metas)
        rows = slice(layer * bs * num_queries, (layer + 1) * bs * num_queries)
        assert torch.equal(labels[rows], torch.cat(ref[0]))
        assert torch.equal(label_weights[rows], torch.cat(ref[1]))
        assert torch.equal(bbox_targets[rows], torch.cat(ref[2]))
        assert torch.equal(bbox_weights[rows], torch.cat(ref[3]))
        assert num_pos[layer] == ref[4]
    # one-to-one: every ground-truth box once per layer (Q >= G here)
    assert (num_pos == sum(len(g) for g in gts)).all()


def test_non_finite_predictions_are_matched_as_zeros(head_outputs):
    head, outs, samples = head_outputs
    gts = [s.gt_instances for s in samples]
    metas = [s.metainfo for s in samples]
    cls_scores, bbox_preds = head(outs['hidden_states'], outs['references'])
    cls_scores = cls_scores[:, :, -head.num_query:].detach().float()
    bbox_preds = bbox_preds[:, :, -head.num_query:].detach().float()
    broken = cls_scores.clone()
    broken[:, 0, :5] = float('nan')
    broken[:, 0, 5:7] = float('inf')
    zeroed = torch.nan_to_num(broken, 0.0, 0.0, 0.0)
    got = head.hungarian_targets(broken, bbox_preds, gts, metas)
    want = head.hungarian_targets(zeroed, bbox_preds, gts, metas)
    for a, b in zip(got[:4], want[:4]):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(got[4], want[4])


def test_denoising_targets_built_once_for_all_layers(head_outputs,
                                                     monkeypatch):
    """Co-DINO's denoising losses take the batched path (their values are
    compared with mmdet's per-layer ones above): one target build instead
    of one per decoder layer."""
    head, outs, samples = head_outputs
    if outs.get('dn_meta') is None:
        pytest.skip('no denoising queries in this family')
    calls = []
    build = head.get_dn_targets
    monkeypatch.setattr(head, 'get_dn_targets',
                        lambda *a, **k: calls.append(1) or build(*a, **k))
    for batched, expected in ((True, 1), (False, len(outs['references']) -
                                          1)):
        calls.clear()
        losses, _ = losses_and_grads(head, outs, samples, batched)
        assert len(calls) == expected
        assert 'dn_loss_cls' in losses and 'd0.dn_loss_iou' in losses
