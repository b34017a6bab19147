"""mmengine checkpoints load under torch's ``weights_only`` default.

See ``projects/codetr/utils/compat.py`` (mmengine#1655).
"""
import pickle

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.runner.checkpoint import (_load_checkpoint, load_checkpoint,
                                        save_checkpoint)
from mmengine.utils import digit_version
from torch import nn

from projects.codetr.utils import compat

needs_weights_only_default = pytest.mark.skipif(
    digit_version(torch.__version__) < digit_version('2.6.0'),
    reason='torch < 2.6 does not default to weights_only')


@pytest.fixture
def runner_checkpoint(tmp_path):
    """A checkpoint with what mmengine's ``Runner.save_checkpoint`` writes:
    meta, weights, and the message hub with its HistoryBuffers (numpy
    arrays) and a numpy scalar in ``runtime_info``."""
    hub = MessageHub(f'compat_test_{id(tmp_path)}')
    for step, loss in enumerate([2.5, 1.5, 0.5]):
        hub.update_scalar('train/loss', loss)
        hub.update_scalar('train/iter_count', step, count=1)
    hub.update_info('eta', np.float64(12.5))
    hub.update_info('iter', 3)
    model = nn.Linear(3, 2)
    checkpoint = dict(
        meta=dict(
            epoch=1,
            iter=3,
            seed=0,
            dataset_meta=dict(
                classes=('circle', 'square'), palette=[(220, 20, 60)])),
        state_dict=model.state_dict(),
        message_hub=hub.state_dict())
    path = tmp_path / 'epoch_1.pth'
    save_checkpoint(checkpoint, str(path))
    return path, model


@needs_weights_only_default
def test_checkpoint_needs_the_allowlist(runner_checkpoint):
    path, _ = runner_checkpoint
    # Without the allowlist (which importing the plugin installed), plain
    # torch.load, as mmengine calls it, refuses the file.
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        unsafe = set(
            torch.serialization.get_unsafe_globals_in_checkpoint(path))
        with pytest.raises(pickle.UnpicklingError):
            torch.load(path)
    finally:
        torch.serialization.add_safe_globals(saved)
    assert 'mmengine.logging.history_buffer.HistoryBuffer' in unsafe
    assert 'builtins.getattr' in unsafe
    assert any(name.startswith('numpy') for name in unsafe)


def test_mmengine_loads_runner_checkpoint(runner_checkpoint):
    path, model = runner_checkpoint
    compat.allow_mmengine_checkpoints()  # idempotent; also run on import
    checkpoint = _load_checkpoint(str(path), map_location='cpu')

    restored = MessageHub('compat_test_restored')
    restored.load_state_dict(checkpoint['message_hub'])
    loss = restored.get_scalar('train/loss')
    assert isinstance(loss, HistoryBuffer)
    np.testing.assert_allclose(loss.data[0], [2.5, 1.5, 0.5])
    assert loss.mean(3) == pytest.approx(1.5)
    assert restored.get_info('eta') == 12.5
    assert checkpoint['meta']['dataset_meta']['classes'] == ('circle',
                                                             'square')

    # The path `load_from=` and `runner.resume` take for the weights.
    target = nn.Linear(3, 2)
    load_checkpoint(target, str(path), map_location='cpu')
    for name, value in model.state_dict().items():
        assert torch.equal(target.state_dict()[name], value)


@pytest.mark.parametrize('obj,name', [
    (HistoryBuffer, '__init__'),
    (HistoryBuffer, '_set_default_statistics'),
    (torch, 'load'),
    (np.ndarray, 'mean'),
])
def test_getattr_standin_refuses_other_attributes(obj, name):
    with pytest.raises(pickle.UnpicklingError):
        compat._history_buffer_attr(obj, name)


def test_getattr_standin_allows_statistics_methods():
    for name in ('min', 'max', 'mean', 'current'):
        assert compat._history_buffer_attr(HistoryBuffer, name) is getattr(
            HistoryBuffer, name)


@needs_weights_only_default
def test_numpy_arrays_load_under_both_numpy_module_names(tmp_path):
    # numpy 2 pickles its reconstructors as `numpy._core.multiarray.*`,
    # numpy 1 as `numpy.core.multiarray.*`; a checkpoint keeps the name of
    # the numpy that wrote it. The legacy (non-zip) format keeps the pickle
    # as plain bytes, so the module name can be swapped in place.
    content = dict(array=np.arange(4, dtype=np.float32), scalar=np.int64(7))
    path = tmp_path / 'numpy.pth'
    torch.save(content, path, _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    for module in (b'numpy._core.multiarray', b'numpy.core.multiarray'):
        for other in (b'numpy._core.multiarray', b'numpy.core.multiarray'):
            raw = raw.replace(other + b'\n', module + b'\n')
        assert module + b'\n' in raw
        path.write_bytes(raw)
        loaded = torch.load(path, weights_only=True)
        np.testing.assert_array_equal(loaded['array'], content['array'])
        assert loaded['array'].dtype == np.float32
        assert loaded['scalar'] == 7 and isinstance(loaded['scalar'], np.int64)
