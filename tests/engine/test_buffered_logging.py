"""Buffered training logs: ``BufferedLogRuntimeInfoHook`` with a
``BufferedGradNorm*OptimWrapper`` puts into the message hub (and into each
checkpoint) exactly what mmengine's ``RuntimeInfoHook`` and
``OptimWrapper`` put there, but reads the device only on the logger's
iterations, at the end of each epoch and before checkpoints."""
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook, RuntimeInfoHook
from mmengine.logging import MessageHub
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapper
from mmengine.runner import Runner
from torch import nn

from projects.codetr.engine import (BufferedGradNormOptimWrapper,
                                    BufferedLogRuntimeInfoHook)
from projects.codetr.engine.run_config import RunConfigError, enable_amp

ITERS_PER_EPOCH = 7  # not a multiple of the logger interval below
LOG_INTERVAL = 3


class ToyRegressor(BaseModel):
    """Two losses and one logged non-loss value of a linear map."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 2)

    def forward(self, inputs, targets, mode='loss'):
        out = self.linear(torch.stack(inputs))
        error = out - torch.stack(targets)
        return dict(
            loss_l2=error.pow(2).mean(),
            loss_l1=error.abs().mean(),
            mean_out=out.mean().detach())


class ToyData(torch.utils.data.Dataset):

    def __len__(self) -> int:
        return 2 * ITERS_PER_EPOCH

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return dict(inputs=torch.randn(4, generator=g),
                    targets=torch.randn(2, generator=g))


class HistoryLengths(Hook):
    """After each iteration (below the logger's priority), how many values
    the message hub holds for ``train/loss`` and ``train/grad_norm``."""

    priority = 'LOWEST'

    def __init__(self) -> None:
        self.lengths = []

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        hub = runner.message_hub
        self.lengths.append(
            tuple(
                len(hub.get_scalar(key).data[0]) if key in hub.log_scalars
                else 0 for key in ('train/loss', 'train/grad_norm')))


def run(tmp_path,
        name: str,
        buffered: bool,
        epochs: int = 2,
        by_epoch: bool = True,
        accumulate: int = 1):
    # a config, not an instance: the runner builds the wrapper after its
    # message hub, which the wrapper then logs into
    wrapper = dict(
        type='BufferedGradNormOptimWrapper' if buffered else 'OptimWrapper',
        optimizer=dict(type='AdamW', lr=0.05),
        clip_grad=dict(max_norm=0.1),
        accumulative_counts=accumulate)
    lengths = HistoryLengths()
    runner = Runner(
        model=ToyRegressor(),
        default_scope='mmdet',
        work_dir=str(tmp_path / name),
        experiment_name=f'buffered_logging_{name}_{tmp_path.name}',
        train_dataloader=dict(
            dataset=ToyData(),
            sampler=dict(type='DefaultSampler', shuffle=False),
            batch_size=2,
            collate_fn=dict(type='pseudo_collate')),
        train_cfg=dict(by_epoch=True, max_epochs=epochs) if by_epoch else
        dict(by_epoch=False, max_iters=epochs * ITERS_PER_EPOCH),
        optim_wrapper=wrapper,
        default_hooks=dict(
            runtime_info=BufferedLogRuntimeInfoHook()
            if buffered else RuntimeInfoHook(),
            logger=dict(type='LoggerHook', interval=LOG_INTERVAL),
            checkpoint=dict(type='CheckpointHook', interval=1)
            if by_epoch else dict(
                type='CheckpointHook', by_epoch=False, interval=4)),
        custom_hooks=[lengths],
        log_level='WARNING')
    runner.train()
    return runner, lengths.lengths


TRAIN_KEYS = ('train/loss', 'train/loss_l2', 'train/loss_l1',
              'train/mean_out', 'train/grad_norm', 'train/lr')


def logged(scalars: dict) -> dict:
    return {key: scalars[key].data[0] for key in TRAIN_KEYS}


def test_message_hub_and_checkpoints_hold_what_mmengine_logs(tmp_path):
    reference, _ = run(tmp_path, 'reference', buffered=False)
    buffered, _ = run(tmp_path, 'buffered', buffered=True)
    expected = logged(reference.message_hub.log_scalars)
    got = logged(buffered.message_hub.log_scalars)
    assert len(got['train/loss']) == 2 * ITERS_PER_EPOCH
    for key in TRAIN_KEYS:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    # the order of the keys, hence of the columns of the log line
    assert [k for k in buffered.message_hub.log_scalars if k in TRAIN_KEYS
            ] == [k for k in reference.message_hub.log_scalars
                  if k in TRAIN_KEYS]
    for epoch in (1, 2):
        saved = [
            torch.load(
                str(tmp_path / name / f'epoch_{epoch}.pth'),
                weights_only=False)['message_hub']['log_scalars']
            for name in ('reference', 'buffered')
        ]
        assert len(saved[1]['train/loss'].data[0]) == epoch * ITERS_PER_EPOCH
        for key in TRAIN_KEYS:
            np.testing.assert_array_equal(
                saved[1][key].data[0], saved[0][key].data[0], err_msg=key)


def test_iteration_based_run_with_accumulation_logs_the_same(tmp_path):
    runs = [
        run(tmp_path, name, buffered, by_epoch=False, accumulate=2)[0]
        for name, buffered in (('iter_ref', False), ('iter_buf', True))
    ]
    expected, got = (logged(r.message_hub.log_scalars) for r in runs)
    assert len(got['train/grad_norm']) == ITERS_PER_EPOCH  # every 2nd iter
    for key in TRAIN_KEYS:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    saved = [
        torch.load(str(tmp_path / name / 'iter_8.pth'),
                   weights_only=False)['message_hub']['log_scalars']
        for name in ('iter_ref', 'iter_buf')
    ]
    assert len(saved[1]['train/loss'].data[0]) == 8
    for key in TRAIN_KEYS:
        np.testing.assert_array_equal(
            saved[1][key].data[0], saved[0][key].data[0], err_msg=key)


def test_values_reach_the_hub_only_on_logger_iterations(tmp_path):
    _, lengths = run(tmp_path, 'lengths', buffered=True)
    # first iteration, then every 3rd (inner) iteration, the end of each
    # epoch; the loss and the gradient norm together
    flushed_at = [1, 3, 6, 7, 10, 13, 14]
    expected, count = [], 0
    for i in range(1, 2 * ITERS_PER_EPOCH + 1):
        if i in flushed_at:
            count = i
        expected.append((count, count))
    assert lengths == expected


def test_reference_run_reads_every_iteration(tmp_path):
    """The counterpart of the test above: mmengine's hook and wrapper fill
    the hub each iteration, so the lengths above can tell them apart."""
    _, lengths = run(tmp_path, 'eager', buffered=False, epochs=1)
    assert lengths == [(i, i) for i in range(1, ITERS_PER_EPOCH + 1)]


def test_wrapper_without_the_hook_logs_each_norm_at_once():
    hub = MessageHub.get_instance('buffered_logging_no_hook')
    model = ToyRegressor()
    wrapper = BufferedGradNormOptimWrapper(
        optimizer=torch.optim.AdamW(model.parameters()),
        clip_grad=dict(max_norm=0.1))
    wrapper.message_hub = hub
    for _ in range(2):
        sample = ToyData()[0]
        losses = model([sample['inputs']], [sample['targets']])
        wrapper.update_params(losses['loss_l2'])
    assert len(hub.get_scalar('train/grad_norm').data[0]) == 2
    assert wrapper.pop_buffered_scalars() == []


def test_interval_defaults_to_the_loggers_and_must_be_positive():
    with pytest.raises(ValueError, match='interval'):
        BufferedLogRuntimeInfoHook(interval=0)
    from mmengine.hooks import LoggerHook
    model = ToyRegressor()
    plain = OptimWrapper(optimizer=torch.optim.AdamW(model.parameters()))
    hub = MessageHub.get_instance('buffered_logging_interval')
    runner = SimpleNamespace(
        hooks=[LoggerHook(interval=17)], optim_wrapper=plain,
        message_hub=hub, logger=logging.getLogger('buffered'),
        epoch=0, iter=0, max_epochs=1, max_iters=1,
        train_dataloader=SimpleNamespace(dataset=None))
    hook = BufferedLogRuntimeInfoHook()
    hook.before_train(runner)
    assert hook.interval == 17
    assert hook._wrappers == []  # mmengine's wrapper keeps reading


@pytest.mark.parametrize('kind,expected', [
    ('OptimWrapper', 'AmpOptimWrapper'),
    ('BufferedGradNormOptimWrapper', 'BufferedGradNormAmpOptimWrapper'),
    ('BufferedGradNormAmpOptimWrapper', 'BufferedGradNormAmpOptimWrapper'),
    ('mmdet.BufferedGradNormOptimWrapper',
     'mmdet.BufferedGradNormAmpOptimWrapper'),
])
def test_amp_option_picks_the_matching_wrapper(monkeypatch, kind, expected):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    cfg = Config(dict(optim_wrapper=dict(type=kind)))
    enable_amp(cfg)
    assert cfg.optim_wrapper.type == expected
    assert cfg.optim_wrapper.loss_scale == 'dynamic'


def test_amp_option_names_the_wrappers_it_knows(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    cfg = Config(dict(optim_wrapper=dict(type='ApexOptimWrapper')))
    with pytest.raises(RunConfigError, match='BufferedGradNormAmpOptim'):
        enable_amp(cfg)


def test_flush_keeps_each_values_type_and_the_order():
    """float64 losses and integer counts reach the hub as ``.item()`` gives
    them (not rounded through float32), host values in their place."""
    hub = MessageHub.get_instance('buffered_logging_dtypes')
    runner = SimpleNamespace(
        message_hub=hub, train_dataloader=range(10), hooks=[],
        optim_wrapper=None)
    hook = BufferedLogRuntimeInfoHook(interval=5)
    outputs = dict(
        loss=torch.tensor(1 / 30, dtype=torch.float64),
        count=torch.tensor(2**24 + 1),
        flag=3,
        acc=torch.tensor(0.5))
    hook.after_train_iter(runner, 0, outputs=outputs)
    assert [k for k in hub.log_scalars] == [f'train/{k}' for k in outputs]
    for key, value in outputs.items():
        expected = value.item() if isinstance(value, torch.Tensor) else value
        got = hub.get_scalar(f'train/{key}').current()
        assert got == expected, key


def test_fused_adamw_stays_fused_when_loading_a_non_fused_state():
    """A checkpoint of the non-fused AdamW (older configs) loaded into the
    configs' fused one: the options of the running optimizer stay, and the
    loss scaler can hand the fused step its overflow flag."""
    old_model, new_model = ToyRegressor(), ToyRegressor()
    old = torch.optim.AdamW(old_model.parameters(), lr=0.05)
    old_model(*[[t] for t in ToyData()[0].values()])['loss_l2'].backward()
    old.step()
    wrapper = BufferedGradNormOptimWrapper(
        optimizer=torch.optim.AdamW(new_model.parameters(), lr=0.05,
                                    fused=True),
        clip_grad=dict(max_norm=0.1))
    wrapper.load_state_dict(old.state_dict())
    optimizer = wrapper.optimizer
    assert all(group['fused'] for group in optimizer.param_groups)
    assert all(state['step'].dtype == torch.float32
               for state in optimizer.state.values())
    scaler = torch.amp.GradScaler('cpu')
    loss = new_model(*[[t] for t in ToyData()[1].values()])['loss_l2']
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    scaler.step(optimizer)  # raised before: the flag to a non-fused step
    scaler.update()
    assert all(state['step'].item() == 2 for state in optimizer.state.values())
