"""tools/convert_checkpoint.py, the safe loading of released checkpoints and
the check that stops tools/test.py / tools/train.py on an unconverted one.

The released-layout checkpoints are written from the golden parameter names
of the authors' code (tests/data/parity/official_seed0.json['shapes']),
each tensor filled by the golden ``fill`` from its released name. The
reference weights (``fill_by_released_name``) go through our own name
mapping, so hand-written pairs (``KNOWN_RENAMES``) pin the renamed modules
as well: a mapping that swapped two modules of equal shapes would pass the
strict load but not them.
"""
import contextlib
import functools
import os
import os.path as osp
import runpy
import subprocess
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch
from codetr_testing import build_model
from mmengine.config import Config
from mmengine.runner import load_checkpoint
from parity_data import fill, fill_by_released_name, golden, parity_model_cfg
from test_tools import AP_LINE, REPO, TINY_CONFIG, run, run_tool, write_config

from projects.codetr.checkpoint import (CODETR, RELEASED, UNKNOWN,
                                        ReleasedCheckpointError,
                                        UnsafeCheckpointError, check_load_from,
                                        detect_layout, load_weights,
                                        to_released)

CONVERTER = osp.join('tools', 'convert_checkpoint.py')
HINT = 'python tools/convert_checkpoint.py'


@contextlib.contextmanager
def fake_module(name: str, **attrs):
    """A module that exists only inside the block, as mmcv 1.x exists only
    where the released code saved its checkpoints."""
    module = types.ModuleType(name)
    vars(module).update(attrs)
    sys.modules[name] = module
    try:
        yield module
    finally:
        del sys.modules[name]


class ConfigDict(dict):
    """Pickles like mmcv 1.x's ``ConfigDict`` (an ``addict.Dict``)."""
    __module__ = 'mmcv.utils.config'

    def __getstate__(self):
        return self

    def __setstate__(self, state):
        self.update(state)


@functools.lru_cache(maxsize=None)
def _released_state_dict() -> 'OrderedDict[str, torch.Tensor]':
    state = OrderedDict()
    for name, shape in golden()['shapes'].items():
        if name.endswith('num_batches_tracked'):
            state[name] = torch.tensor(0)
        elif not shape:
            state[name] = torch.tensor(1.0)
        else:
            state[name] = fill(name, torch.empty(shape))
    return state


def released_state_dict(prefix: str = '') -> 'OrderedDict[str, torch.Tensor]':
    """Every golden released name (starting with ``prefix``) filled as the
    golden run did (integer buffers 0, the 0-d ATSS scales 1.0). A new dict
    of the same (not to be modified) tensors."""
    return OrderedDict((k, v) for k, v in _released_state_dict().items()
                       if k.startswith(prefix))


_T = 'query_head.transformer.'
# codetr name -> released name, one per renamed module, written by hand from
# the two codebases (not derived from released_names.py): the filled
# reference weights come through that mapping, so only these pairs catch a
# wrong mapping that still matches every name and shape.
KNOWN_RENAMES = {
    _T + 'encoder.layers.1.self_attn.sampling_offsets.weight':
    _T + 'encoder.layers.1.attentions.0.sampling_offsets.weight',
    _T + 'encoder.layers.0.ffn.layers.0.0.weight':
    _T + 'encoder.layers.0.ffns.0.layers.0.0.weight',
    _T + 'decoder.layers.1.self_attn.attn.in_proj_weight':
    _T + 'decoder.layers.1.attentions.0.attn.in_proj_weight',
    _T + 'decoder.layers.0.cross_attn.value_proj.weight':
    _T + 'decoder.layers.0.attentions.1.value_proj.weight',
    _T + 'decoder.layers.1.ffn.layers.1.weight':
    _T + 'decoder.layers.1.ffns.0.layers.1.weight',
    _T + 'level_embed': _T + 'level_embeds',
    _T + 'memory_trans_fc.weight': _T + 'enc_output.weight',
    _T + 'memory_trans_norm.weight': _T + 'enc_output_norm.weight',
    _T + 'pos_trans_fc.weight': _T + 'pos_trans.weight',
}

# Small released-layout state dicts for the tests of errors: the encoder
# uses released-only names, the neck names alike in both layouts.
ENCODER = 'query_head.transformer.encoder.'
NECK = 'neck.'


def save_released(path, state_dict, variant='wrapped'):
    """Save as the released code would: mmcv 1.x metadata (a ConfigDict of
    a module that exists only while saving, numpy scalars), optimizer."""
    if variant == 'bare':
        torch.save(state_dict, path)
        return str(path)
    if variant == 'ddp':
        state_dict = OrderedDict(
            (f'module.{k}', v) for k, v in state_dict.items())
    meta = dict(
        mmcv_version='1.7.2',
        epoch=12,
        iter=87960,
        CLASSES=('a', 'b'),
        config=ConfigDict(model=ConfigDict(type='CoDETR')),
        hook_msgs=dict(best_score=np.float64(0.495), last_ckpt='x.pth'))
    optimizer = dict(
        state={0: dict(exp_avg=torch.ones(2))},
        param_groups=[dict(lr=2e-4, params=[0])])
    with fake_module(ConfigDict.__module__, ConfigDict=ConfigDict):
        torch.save(
            dict(meta=meta, state_dict=state_dict, optimizer=optimizer), path)
    return str(path)


def convert(src, dst, *args, monkeypatch):
    """tools/convert_checkpoint.py in this process (saves an interpreter
    start); its exit message, None on success."""
    monkeypatch.syspath_prepend(osp.join(REPO, 'tools'))
    monkeypatch.setattr(sys, 'argv', [CONVERTER, str(src), str(dst), *args])
    try:
        runpy.run_path(osp.join(REPO, CONVERTER), run_name='__main__')
    except SystemExit as exc:
        return exc.code
    return None


@pytest.fixture(scope='module')
def parity():
    """The parity model and its weights filled by released name (the
    reference); the model is reused as the target of the loads."""
    model = build_model(parity_model_cfg())
    fill_by_released_name(model)
    return model, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def expected(parity):
    return parity[1]


def test_layout_of_golden_and_codetr_names(expected):
    released = released_state_dict()
    assert detect_layout(released) == RELEASED
    assert detect_layout(expected) == CODETR
    assert detect_layout({f'module.{k}': v for k, v in released.items()}) \
        == RELEASED
    assert detect_layout(released_state_dict(NECK)) == UNKNOWN  # same names
    assert detect_layout({**dict(released), **dict(expected)}) == UNKNOWN


@pytest.mark.parametrize('variant', ['wrapped', 'bare', 'ddp'])
def test_converted_released_checkpoint_loads_strictly_with_golden_weights(
        variant, parity, tmp_path, monkeypatch):
    model, expected = parity
    src = save_released(tmp_path / 'released.pth', released_state_dict(),
                        variant)
    dst = tmp_path / 'out' / 'codetr.pth'
    if variant == 'wrapped':  # as a user would run it
        proc = subprocess.run([sys.executable, CONVERTER, src,
                               str(dst)],
                              cwd=REPO,
                              capture_output=True,
                              text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout
        assert 'dropped: meta, optimizer' in out
        assert 'read as plain data: mmcv.utils.config.ConfigDict' in out
    else:
        assert convert(src, dst, monkeypatch=monkeypatch) is None
    loaded = load_weights(src)
    assert loaded.stripped_ddp_prefix == (variant == 'ddp')

    saved = torch.load(dst, weights_only=True)  # plain types only
    assert saved['meta']['source_layout'] == RELEASED
    assert saved['meta']['source_file'] == 'released.pth'
    state = strict_load_equals(model, dst, expected)
    released = released_state_dict()
    for ours, theirs in KNOWN_RENAMES.items():
        assert torch.equal(state[ours], released[theirs]), ours


def strict_load_equals(model, path, expected):
    """Overwrite ``model``'s tensors (so that only the load can give the
    weights), load ``path`` strictly as tools/test.py loads a checkpoint
    (``load_checkpoint``), check every tensor equals ``expected``'s and
    return the state dict."""
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.fill_(7)
    load_checkpoint(model, str(path), map_location='cpu', strict=True)
    state = model.state_dict()
    assert list(state) == list(expected)
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name
    return state


def test_round_trip_keeps_names_and_tensors(tmp_path, monkeypatch):
    original = released_state_dict()
    src = save_released(tmp_path / 'r.pth', original)
    assert convert(src, tmp_path / 'c.pth', monkeypatch=monkeypatch) is None
    assert convert(
        tmp_path / 'c.pth',
        tmp_path / 'back.pth',
        '--to',
        'released',
        monkeypatch=monkeypatch) is None
    back = torch.load(tmp_path / 'back.pth', weights_only=True)
    assert back['meta']['source_layout'] == CODETR
    assert list(back['state_dict']) == list(original)
    for name, tensor in original.items():
        assert back['state_dict'][name].dtype == tensor.dtype
        assert torch.equal(back['state_dict'][name], tensor), name


@pytest.mark.parametrize('case', ['unmapped', 'unknown', 'same', 'missing'])
def test_conversion_errors_name_the_problem(case, tmp_path, monkeypatch):
    state, args = released_state_dict(ENCODER), []
    if case == 'unmapped':
        state['query_head.transformer.dn_query_generator.weight'] = \
            torch.ones(1)
        expected = [
            'query_head.transformer.dn_query_generator.weight',
            'released (mmdet 2.x)', 'modules it does not have', '--from'
        ]
    elif case == 'unknown':
        state = released_state_dict(NECK)
        expected = ['cannot tell the layout', '--from', '--to codetr']
    elif case == 'same':
        args = ['--to', 'released']
        expected = ['already uses the released Co-DETR (mmdet 2.x) names']
    src = save_released(tmp_path / 'in.pth', state, 'bare')
    if case == 'missing':
        src = str(tmp_path / 'nope.pth')
        expected = [f'checkpoint not found: {src}']
    message = convert(
        src, tmp_path / 'out.pth', *args, monkeypatch=monkeypatch)
    assert isinstance(message, str) and message.startswith('error: ')
    for text in expected:
        assert text in message
    assert not (tmp_path / 'out.pth').exists()


class Payload:
    """Pickles as a call of ``func(arg)`` (the classic pickle exploit)."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg, )


def _run_marker(path):
    """Stand-in for a harmful function of an mmcv 1.x module."""
    open(path, 'w').close()


_run_marker.__module__ = 'mmcv.runner.hooks'


@pytest.mark.parametrize(
    'func,name',
    [
        (os.system, 'posix.system'),
        # pickle protocol 2 (torch.save's) writes Python 2 module names
        (subprocess.call, 'commands.call'),
        (exec, 'builtins.exec'),
    ])
def test_code_in_a_checkpoint_is_refused_not_run(func, name, tmp_path,
                                                 monkeypatch):
    marker = tmp_path / 'pwned'
    arg = {
        os.system: f'touch {marker}',
        subprocess.call: ['touch', str(marker)],
        exec: f'open({str(marker)!r}, "w")'
    }[func]
    path = tmp_path / 'evil.pth'
    torch.save(
        dict(
            state_dict=released_state_dict(ENCODER),
            meta=dict(x=Payload(func, arg))), path)
    with pytest.raises(UnsafeCheckpointError, match='refusing to load') as e:
        load_weights(str(path))
    assert f'`{name}`' in str(e.value)
    with pytest.raises(UnsafeCheckpointError):
        check_load_from(str(path))
    message = convert(path, tmp_path / 'out.pth', monkeypatch=monkeypatch)
    assert message.startswith('error: refusing to load') and name in message
    assert not marker.exists()


def test_mmcv_globals_become_inert_data(tmp_path):
    """A function under ``mmcv.`` gets the stand-in, so even a harmful one
    named there is not called."""
    marker = tmp_path / 'pwned'
    path = tmp_path / 'c.pth'
    with fake_module(_run_marker.__module__, _run_marker=_run_marker):
        torch.save(
            dict(
                state_dict=released_state_dict(ENCODER),
                meta=Payload(_run_marker, str(marker))), path)
    loaded = load_weights(str(path))
    assert loaded.stand_ins == ['mmcv.runner.hooks._run_marker']
    assert loaded.layout == RELEASED and loaded.dropped == ['meta']
    assert not marker.exists()


@pytest.fixture(scope='module')
def shapes_config(tmp_path_factory):
    """Config of the tiny model on 2 generated validation images."""
    root = tmp_path_factory.mktemp('shapes')
    code, out = run([
        sys.executable, 'tools/generate_shapes_dataset.py', '--out',
        str(root), '--num-train', '1', '--num-val', '2', '--seed', '1',
        '--min-side', '64', '--max-side', '96', '--min-size', '16',
        '--workers', '1'
    ])
    assert code == 0, out
    return write_config(tmp_path_factory.mktemp('cfg') / 'tiny.py', root)


@pytest.fixture(scope='module')
def tiny_released(tmp_path_factory, shapes_config):
    """A checkpoint of the tiny model, renamed to the released layout."""
    model = build_model(Config.fromfile(TINY_CONFIG).model, seed=3)
    state = OrderedDict(
        (to_released(k), v) for k, v in model.state_dict().items())
    path = tmp_path_factory.mktemp('ckpt') / 'tiny_released.pth'
    return save_released(path, state)


@pytest.mark.parametrize('script', ['test.py', 'train.py'])
def test_tools_stop_on_released_checkpoint_with_the_fix(
        script, shapes_config, tiny_released, tmp_path, monkeypatch):
    args = [shapes_config, tiny_released] if script == 'test.py' else [
        shapes_config, '--cfg-options', f'load_from={tiny_released}'
    ]
    message = run_tool(
        script, [*args, '--work-dir', str(tmp_path)], monkeypatch)
    assert message.startswith('error: ')
    assert 'released Co-DETR code' in message
    assert f'{HINT} {tiny_released} ' in message
    assert not os.listdir(tmp_path)  # stopped before the runner


def test_check_load_from_passes_other_checkpoints(expected, tmp_path):
    check_load_from(None)
    check_load_from('https://example.com/x.pth')  # mmengine's business
    ours = {k: v for k, v in expected.items() if k.startswith(ENCODER)}
    torch.save(dict(state_dict=ours), tmp_path / 'ours.pth')
    check_load_from(str(tmp_path / 'ours.pth'))
    torch.save(
        dict(state_dict=released_state_dict(ENCODER)), tmp_path / 'r.pth')
    with pytest.raises(ReleasedCheckpointError, match='r_codetr.pth'):
        check_load_from(str(tmp_path / 'r.pth'))


def test_converted_checkpoint_evaluates_end_to_end(shapes_config,
                                                   tiny_released, tmp_path,
                                                   monkeypatch):
    dst = tmp_path / 'tiny_codetr.pth'
    assert convert(tiny_released, dst, monkeypatch=monkeypatch) is None
    code, out = run([
        sys.executable, 'tools/test.py', shapes_config,
        str(dst), '--work-dir',
        str(tmp_path)
    ])
    assert code == 0, out[-3000:]
    assert AP_LINE in out
    # every tensor found its module: no partial (random) load
    assert 'do not match exactly' not in out
