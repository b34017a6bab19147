"""The layer subclasses compute what mmcv/mmdet compute, and AMP holds."""
import pytest
import torch
from codetr_testing import build_model, make_batch, tiny_model_cfg
from mmcv.ops import MultiScaleDeformableAttention

from projects.codetr.models import CoMultiScaleDeformableAttention


def _msda_inputs(bs=2, num_query=7, dims=32, levels=2):
    shapes = torch.tensor([[6, 8], [3, 4]])
    starts = torch.tensor([0, 48])
    num_value = int((shapes[:, 0] * shapes[:, 1]).sum())
    gen = torch.Generator().manual_seed(0)
    return dict(
        query=torch.randn(bs, num_query, dims, generator=gen),
        value=torch.randn(bs, num_value, dims, generator=gen),
        query_pos=torch.randn(bs, num_query, dims, generator=gen),
        reference_points=torch.rand(bs, num_query, levels, 4, generator=gen),
        spatial_shapes=shapes,
        level_start_index=starts)


@pytest.mark.parametrize('ref_dims', [2, 4])
def test_co_msda_matches_mmcv(ref_dims):
    kwargs = dict(embed_dims=32, num_heads=4, num_levels=2, num_points=3,
                  batch_first=True, dropout=0.0)
    torch.manual_seed(0)
    ours = CoMultiScaleDeformableAttention(**kwargs)
    ref = MultiScaleDeformableAttention(**kwargs)
    ref.load_state_dict(ours.state_dict())
    for p in ours.parameters():  # non-trivial offsets and weights
        torch.nn.init.normal_(p, std=0.1)
    ref.load_state_dict(ours.state_dict())
    inputs = _msda_inputs()
    inputs['reference_points'] = inputs['reference_points'][..., :ref_dims]
    torch.testing.assert_close(ours(**inputs), ref(**inputs))


def test_msda_samples_in_fp32_under_autocast(monkeypatch):
    from projects.codetr.models.transformers import \
        co_deformable_detr_layers as layers
    seen = []
    original = layers.multi_scale_deformable_attn_pytorch

    def spy(value, shapes, locations, weights):
        seen.append((value.dtype, locations.dtype, weights.dtype))
        return original(value, shapes, locations, weights)

    monkeypatch.setattr(layers, 'multi_scale_deformable_attn_pytorch', spy)
    attn = CoMultiScaleDeformableAttention(
        embed_dims=32, num_heads=4, num_levels=2, batch_first=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = attn(**_msda_inputs())
    assert seen == [(torch.float32, ) * 3]
    assert torch.isfinite(out).all()


def test_losses_finite_under_autocast():
    """bf16 autocast on CPU stands in for the GPU fp16 run: matching and
    losses run in fp32 and stay finite. (The RoI head is left out: mmcv's
    CPU RoIAlign has no bf16 kernel; on GPU it runs in fp16.)"""
    cfg = tiny_model_cfg()
    cfg.rpn_head, cfg.roi_head = None, None
    model = build_model(cfg).train()
    inputs, samples = make_batch(model, num_boxes=(3, 0))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        losses = model.loss(inputs, samples)
    total, _ = model.parse_losses(losses)
    assert torch.isfinite(total)
    assert losses['loss_cls'].dtype == torch.float32
    assert losses['loss_cls_aux0'].dtype == torch.float32
    total.backward()


def test_rpn_proposals_come_from_fp32_scores():
    """Under autocast the proposals are decoded from fp32 scores (mmcv's
    batched_nms fails on fp16 scores; its CPU NMS has no bf16 kernel)."""
    model = build_model(tiny_model_cfg()).train()
    inputs, samples = make_batch(model)
    pyramid = tuple(
        torch.randn(2, 256, (128 + s - 1) // s, (128 + s - 1) // s)
        for s in (8, 16, 32, 64, 128))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        losses, proposals = model.rpn_loss_and_proposals(pyramid, samples)
    assert set(losses) == {'loss_rpn_cls', 'loss_rpn_bbox'}
    assert all(p.scores.dtype == torch.float32 for p in proposals)
    assert all(len(p.bboxes) > 0 for p in proposals)


def test_matching_survives_non_finite_predictions():
    model = build_model(tiny_model_cfg())
    head = model.query_head
    _, samples = make_batch(model, num_boxes=(3, 2))
    cls = torch.randn(10, 3)
    cls[0, 0] = float('nan')
    boxes = torch.rand(10, 4)
    boxes[1] = float('inf')
    labels, _, _, bbox_weights, pos, _ = head._get_targets_single(
        cls, boxes, samples[0].gt_instances, samples[0].metainfo)
    assert len(pos) == 3 and (labels < 3).sum() == 3


def test_encoder_checkpointing_gives_the_same_gradients():
    grads = []
    for num_cp in (0, 1):
        cfg = tiny_model_cfg()
        cfg.query_head.transformer.encoder.num_cp = num_cp
        model = build_model(cfg).train()
        inputs, samples = make_batch(model)
        torch.manual_seed(1)  # same auxiliary-query sampling
        total, _ = model.parse_losses(model.loss(inputs, samples))
        total.backward()
        grads.append({
            n: p.grad.clone()
            for n, p in model.query_head.transformer.encoder.named_parameters()
        })
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name],
                                   rtol=1e-4, atol=1e-6, msg=name)


def test_num_cp_larger_than_encoder_is_an_error():
    cfg = tiny_model_cfg()
    cfg.query_head.transformer.encoder.num_cp = 5
    with pytest.raises((ValueError, AssertionError)):
        build_model(cfg)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_co_msda_cuda_op_matches_pytorch_path_and_amp():
    """mmcv's CUDA op gives the PyTorch-path result; under fp16 autocast the
    fp32 sampling keeps the output close to the fp32 one."""
    torch.manual_seed(0)
    attn = CoMultiScaleDeformableAttention(
        embed_dims=32, num_heads=4, num_levels=2, num_points=3,
        batch_first=True, dropout=0.0)
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.1)
    inputs = _msda_inputs()
    cpu_out = attn(**inputs)
    attn = attn.cuda()
    cuda_inputs = {k: v.cuda() for k, v in inputs.items()}
    cuda_out = attn(**cuda_inputs)
    torch.testing.assert_close(cuda_out.cpu(), cpu_out, rtol=1e-4,
                               atol=1e-5)
    with torch.autocast('cuda', dtype=torch.float16):
        amp_out = attn(**cuda_inputs)
    torch.testing.assert_close(amp_out.float().cpu(), cpu_out, rtol=2e-2,
                               atol=2e-2)
