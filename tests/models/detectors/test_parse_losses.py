"""``CoDETR.parse_losses``: mmengine's total and log variables, with one
sum over the loss terms; gradients identical to mmengine's."""
import pytest
import torch
from codetr_testing import build_model, make_batch, tiny_model_cfg
from mmengine.model import BaseModel


@pytest.fixture(scope='module')
def model():
    return build_model(tiny_model_cfg())


def test_total_logs_and_gradients_equal_mmengines(model):
    inputs, samples = make_batch(model)
    torch.manual_seed(0)
    losses = model.loss(inputs, samples)
    total, log_vars = model.parse_losses(losses)
    ref_total, ref_vars = BaseModel.parse_losses(model, losses)
    assert list(log_vars) == list(ref_vars)
    for key in log_vars:
        if key != 'loss':
            assert torch.equal(log_vars[key], ref_vars[key]), key
    # two orders of n float32 additions: each is within (n - 1) * eps / 2
    # * sum(|term|) of the exact sum (Higham, recursive summation)
    terms = [v for k, v in ref_vars.items() if 'loss' in k and k != 'loss']
    tol = (len(terms) - 1) * torch.finfo(total.dtype).eps * sum(
        t.abs().item() for t in terms)
    assert abs(total.item() - ref_total.item()) <= tol
    assert log_vars['loss'] is total
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(total, params, retain_graph=True,
                                allow_unused=True)
    ref_grads = torch.autograd.grad(ref_total, params, allow_unused=True)
    assert sum(g is not None for g in grads) > 0
    for g, ref in zip(grads, ref_grads):
        assert (g is None) == (ref is None)
        if g is not None:
            assert torch.equal(g, ref)  # d total / d term is exactly 1


def test_lists_non_loss_keys_and_errors(model):
    a = torch.tensor(1.5, requires_grad=True)
    parts = [torch.tensor([1.0, 3.0]), torch.tensor(0.25)]
    total, log_vars = model.parse_losses(
        dict(loss_a=a, loss_rpn=parts, acc=torch.tensor([50.0, 70.0])))
    assert list(log_vars) == ['loss', 'loss_a', 'loss_rpn', 'acc']
    assert total.item() == 1.5 + 2.0 + 0.25  # acc is logged, not summed
    assert log_vars['acc'].item() == 60.0
    total.backward()
    assert a.grad.item() == 1.0
    total, log_vars = model.parse_losses(dict(acc=torch.tensor(1.0)))
    assert total == 0 and list(log_vars) == ['loss', 'acc']
    with pytest.raises(TypeError, match='loss_x is not a tensor'):
        model.parse_losses(dict(loss_x=1.0))


@pytest.mark.parametrize('dtypes', [(torch.float64, torch.float32),
                                    (torch.float16, torch.float32),
                                    (torch.bfloat16, torch.float16)])
def test_dtypes_promote_as_mmengines_sum(model, dtypes):
    losses = dict(loss_a=torch.tensor(1.25, dtype=dtypes[0]),
                  loss_b=torch.tensor([0.5, 1.5], dtype=dtypes[1]))
    total, _ = model.parse_losses(losses)
    ref_total, _ = BaseModel.parse_losses(model, losses)
    assert total.dtype == ref_total.dtype
    assert total.item() == ref_total.item() == 2.25


def test_an_empty_list_adds_nothing(model):
    for losses in (dict(loss_rpn=[], loss_a=torch.tensor(2.0)),
                   dict(loss_a=torch.tensor(2.0), loss_rpn=[])):
        total, log_vars = model.parse_losses(losses)
        ref_total, ref_vars = BaseModel.parse_losses(model, losses)
        assert total.item() == ref_total.item() == 2.0
        assert list(log_vars) == list(ref_vars)


@pytest.mark.gpu
def test_a_cpu_term_joins_the_gpu_terms(model):
    losses = dict(loss_cpu=torch.tensor(1.0),
                  loss_gpu=torch.tensor(2.0, device='cuda'))
    total, _ = model.parse_losses(losses)
    ref_total, _ = BaseModel.parse_losses(model, losses)
    assert total.device == ref_total.device == torch.device('cuda', 0)
    assert total.item() == 3.0
