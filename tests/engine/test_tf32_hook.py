"""The ``tf32`` config switch: ``MatmulTF32Hook`` sets float32 matrix
products to TF32 or full float32 for a run and restores the setting."""
import logging
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config

from projects.codetr.engine import MatmulTF32Hook
from projects.codetr.engine.run_config import add_missing_safeguards


@pytest.fixture
def restore_precision():
    previous = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(previous)


@pytest.mark.parametrize('tf32,expected', [(True, 'high'),
                                           (False, 'highest'),
                                           (None, 'highest')])
def test_hook_applies_the_config_key_and_restores(restore_precision, tf32,
                                                  expected):
    torch.set_float32_matmul_precision('medium')  # a setting to restore
    cfg = Config(dict(tf32=tf32) if tf32 is not None else dict())
    runner = SimpleNamespace(cfg=cfg, logger=logging.getLogger('tf32'))
    hook = MatmulTF32Hook()
    hook.before_run(runner)
    assert torch.get_float32_matmul_precision() == expected
    hook.after_run(runner)
    assert torch.get_float32_matmul_precision() == 'medium'


def test_config_of_ones_own_with_tf32_gets_the_hook():
    cfg = Config(dict(tf32=True, custom_hooks=[dict(type='RNGStateHook')]))
    added = []
    add_missing_safeguards(cfg, log=added.append)
    assert [h['type'] for h in cfg.custom_hooks] == [
        'RNGStateHook', 'MatmulTF32Hook'
    ]
    assert any('tf32=True' in line for line in added)
    cfg = Config(dict(custom_hooks=[dict(type='RNGStateHook')]))
    add_missing_safeguards(cfg, log=lambda line: None)
    assert [h['type'] for h in cfg.custom_hooks] == ['RNGStateHook']
