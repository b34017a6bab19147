"""On the GPU, the configs' optimizer step and runtime-info hook do not make
the host wait: with ``BufferedGradNorm*OptimWrapper`` and fused AdamW the
clip, the loss scaler and the step read nothing from the device, and
``BufferedLogRuntimeInfoHook`` reads the losses only on the logger's
iterations. CUDA's sync debug mode raises on any read; mmengine's own
wrapper and hook are run under it too, to show that it would."""
import logging
from types import SimpleNamespace

import pytest
import torch
from mmengine.hooks import RuntimeInfoHook
from mmengine.logging import MessageHub
from mmengine.optim import build_optim_wrapper
from torch import nn

from projects.codetr.engine import BufferedLogRuntimeInfoHook

pytestmark = pytest.mark.gpu


class no_device_reads:
    """Raise on any operation that makes the host wait for the GPU."""

    def __enter__(self) -> None:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode('error')

    def __exit__(self, *exc) -> None:
        torch.cuda.set_sync_debug_mode('default')


def build(kind: str, fused: bool):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    model = model.cuda()
    wrapper = build_optim_wrapper(
        model,
        dict(
            type=f'mmdet.{kind}' if kind.startswith('Buffered') else kind,
            optimizer=dict(type='AdamW', lr=1e-3, fused=fused),
            clip_grad=dict(max_norm=0.1, norm_type=2),
            # fp16 gradients far from overflow: every norm finite
            loss_scale=dict(init_scale=2.**8)))
    if hasattr(wrapper, 'buffer_grad_norm'):
        wrapper.buffer_grad_norm = True
    inputs = torch.randn(32, 64, device='cuda')
    return model, wrapper, inputs


def train_step(model, wrapper, inputs) -> None:
    with wrapper.optim_context(model):
        loss = model(inputs).float().pow(2).mean()
    wrapper.update_params(loss)


def test_amp_step_with_fused_adamw_reads_nothing():
    model, wrapper, inputs = build('BufferedGradNormAmpOptimWrapper', True)
    before = [p.detach().clone() for p in model.parameters()]
    with no_device_reads():  # the first step creates the optimizer state
        for _ in range(3):
            train_step(model, wrapper, inputs)
    norms = wrapper.pop_buffered_scalars()
    assert [key for key, _ in norms] == ['train/grad_norm'] * 3
    assert all(torch.isfinite(norm) for _, norm in norms)
    after = list(model.parameters())
    assert any(not torch.equal(b, a) for b, a in zip(before, after))


@pytest.mark.parametrize('kind,fused', [
    ('AmpOptimWrapper', True),  # mmengine's float(norm)
    ('BufferedGradNormAmpOptimWrapper', False),  # the scaler's found_inf
])
def test_each_read_the_configs_avoid_is_caught(kind, fused):
    model, wrapper, inputs = build(kind, fused)
    train_step(model, wrapper, inputs)
    with pytest.raises(RuntimeError, match='synchroniz'):
        with no_device_reads():
            train_step(model, wrapper, inputs)


class _Sized:
    """A data loader stand-in: its length and a dataset without meta."""

    dataset = None

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length


def hook_runner(name: str, iters: int):
    return SimpleNamespace(
        message_hub=MessageHub.get_instance(name),
        train_dataloader=_Sized(iters), hooks=[], optim_wrapper=None,
        logger=logging.getLogger(name), epoch=0, iter=0, max_epochs=1,
        max_iters=iters)


def test_hook_reads_only_on_logger_iterations():
    losses = [
        dict(loss=torch.rand((), device='cuda'),
             loss_cls=torch.rand((), device='cuda')) for _ in range(5)
    ]
    runner = hook_runner('gpu_buffered_hook', iters=len(losses))
    hook = BufferedLogRuntimeInfoHook(interval=3)
    hook.before_train(runner)
    hook.after_train_iter(runner, 0, outputs=losses[0])  # first: reads
    with no_device_reads():
        hook.after_train_iter(runner, 1, outputs=losses[1])
    hook.after_train_iter(runner, 2, outputs=losses[2])  # interval: reads
    with no_device_reads():
        hook.after_train_iter(runner, 3, outputs=losses[3])
    hook.after_train_iter(runner, 4, outputs=losses[4])  # epoch end: reads
    expected = [[float(out[key]) for out in losses]
                for key in ('loss', 'loss_cls')]
    got = [
        list(runner.message_hub.get_scalar(f'train/{key}').data[0])
        for key in ('loss', 'loss_cls')
    ]
    assert got == expected


def test_mmengines_hook_reads_each_iteration():
    runner = hook_runner('gpu_mmengine_hook', iters=5)
    with pytest.raises(RuntimeError, match='synchroniz'):
        with no_device_reads():
            RuntimeInfoHook().after_train_iter(
                runner, 1, outputs=dict(loss=torch.ones((), device='cuda')))
