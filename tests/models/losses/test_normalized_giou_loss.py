"""NormalizedGIoULoss (projects/codetr/models/losses): DETR's GIoU
arithmetic, and the query head's use of it."""
import pytest
import torch
from codetr_testing import REPO_ROOT, build_model, tiny_model_cfg
from mmdet.structures.bbox import bbox_overlaps

from projects.codetr.models.losses import NormalizedGIoULoss


def random_boxes(n, seed):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 0.6
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 0.3 + 0.01
    return torch.cat([xy, xy + wh], 1)


def test_without_eps_it_is_mmdets_giou_and_eps_is_added_not_clamped():
    pred, target = random_boxes(50, 0), random_boxes(50, 1)
    exact = 1 - bbox_overlaps(pred, target, mode='giou', is_aligned=True,
                              eps=1e-300)
    loss = NormalizedGIoULoss(eps=0.0)(pred, target, reduction_override='none')
    torch.testing.assert_close(loss, exact, rtol=1e-13, atol=1e-13)
    # DETR adds 1e-6 to union and enclosing area: a shift of about 1e-6 /
    # area, where mmdet's clamp at 1e-6 changes nothing for these boxes
    shifted = NormalizedGIoULoss()(pred, target, reduction_override='none')
    mmdet = 1 - bbox_overlaps(pred, target, mode='giou', is_aligned=True)
    torch.testing.assert_close(mmdet, exact, rtol=1e-13, atol=1e-13)
    assert (shifted - exact).abs().max() > 1e-6


def test_zero_weights_give_a_zero_loss_that_backpropagates():
    pred = random_boxes(4, 2).requires_grad_()
    loss = NormalizedGIoULoss()(pred, random_boxes(4, 3), torch.zeros(4, 4))
    assert loss.item() == 0
    loss.backward()
    assert pred.grad is not None


def test_heads_pass_normalised_boxes_only_on_the_batched_path():
    cfg = tiny_model_cfg(
        f'{REPO_ROOT}/configs/dab_deformable_detr_r50_50e_coco.py')
    assert cfg.query_head.loss_iou.type == 'NormalizedGIoULoss'
    assert build_model(cfg).query_head.normalized_iou_boxes
    cfg.query_head.batched_matching = False
    with pytest.raises(ValueError, match='batched_matching=True'):
        build_model(cfg)
