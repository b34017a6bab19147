"""The dense auxiliary heads run before the RPN (``dense_heads_first``, on by
default): the released order (RPN, RoI heads, dense heads) gives the same
losses in the same key order, bit for bit, and the same gradients to
rounding, for
Co-Deformable-DETR with ATSS and with ATSS and FCOS."""
import pytest
import torch
from codetr_testing import build_model, make_batch, tiny_model_cfg

K3_FCOS = 'configs/co_deformable_detr_r50_1x_coco_k3_fcos.py'


def step(cfg_path, dense_heads_first: bool, num_boxes=(3, 2)):
    """Losses, gradients and the order in which the heads ran."""
    cfg = tiny_model_cfg(cfg_path) if cfg_path else tiny_model_cfg()
    model = build_model(cfg).double().train()
    model.dense_heads_first = dense_heads_first
    order = []
    for name, head in [('rpn', model.rpn_head)] + [
        (type(h).__name__, h) for h in model.bbox_head
    ]:
        head.register_forward_pre_hook(
            lambda module, args, name=name: order.append(name))
    inputs, samples = make_batch(model, num_boxes=num_boxes)
    for sample in samples:
        sample.gt_instances.bboxes = sample.gt_instances.bboxes.double()
    torch.manual_seed(0)  # the RPN and RoI samplers draw
    losses = model.loss(inputs.double(), samples)
    total, _ = model.parse_losses(losses)
    total.backward()
    grads = {n: p.grad for n, p in model.named_parameters()
             if p.grad is not None}
    return losses, grads, order


@pytest.mark.parametrize('cfg_path,dense', [(None, ['CoATSSHead']),
                                            (K3_FCOS,
                                             ['CoATSSHead', 'CoFCOSHead'])])
@pytest.mark.parametrize('num_boxes', [(3, 2), (2, 0)])
def test_released_order_gives_the_same_losses(cfg_path, dense, num_boxes):
    ours, our_grads, our_order = step(cfg_path, True, num_boxes)
    theirs, their_grads, their_order = step(cfg_path, False, num_boxes)
    assert our_order == dense + ['rpn']
    assert their_order == ['rpn'] + dense
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key
    assert our_grads.keys() == their_grads.keys() and our_grads
    # where a feature feeds several heads, autograd adds their gradients
    # in the reverse order of the heads: float64 rounding
    for name, grad in their_grads.items():
        torch.testing.assert_close(
            our_grads[name], grad, rtol=1e-12, atol=1e-14, msg=name)


def test_on_by_default():
    assert build_model(tiny_model_cfg()).dense_heads_first
