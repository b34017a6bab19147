"""End-to-end tests of tools/train.py, tools/test.py, the dist_*.sh launchers
and tools/analysis/plot_curves.py on CPU.

The main test trains a shrunk Co-DETR (tests/configs/tiny_co_detr_shapes.py,
which inherits configs/shapes/co_deformable_detr_r50_shapes_small.py) for 2
epochs with 2 processes (gloo), once without interruption and once killed
(SIGKILL) in the second epoch and resumed, and checks that both end in the
same state: weights, optimizer, schedulers, counters and random states.
"""
import logging
import os
import os.path as osp
import pickle
import random
import runpy
import socket
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from projects.codetr.engine.rng_state_hook import (RNGStateHook, get_rng_state,
                                                   set_rng_state)
from projects.codetr.engine.run_config import (RunConfigError,
                                               find_resume_checkpoint,
                                               set_resume)

pytestmark = pytest.mark.slow  # runs the tools in subprocesses

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TINY_CONFIG = osp.join(REPO, 'tests', 'configs', 'tiny_co_detr_shapes.py')
AP_LINE = ('Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | '
           'maxDets=100 ] =')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run(args, env=None, timeout=300):
    """Run a command from the repository root; return (code, output)."""
    # tests/ holds _crash_hook, which the test config imports.
    full_env = dict(os.environ, PYTHONPATH=f'{REPO}:{osp.join(REPO, "tests")}',
                    OMP_NUM_THREADS='1', PORT=str(free_port()))
    full_env.update(env or {})
    proc = subprocess.run(args, cwd=REPO, env=full_env, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    return proc.returncode, proc.stdout


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    """4 training and 2 validation images of 64-96 px."""
    root = tmp_path_factory.mktemp('shapes')
    code, out = run([sys.executable, 'tools/generate_shapes_dataset.py',
                     '--out', str(root), '--num-train', '4', '--num-val',
                     '2', '--seed', '1', '--min-side', '64', '--max-side',
                     '96', '--min-size', '16', '--workers', '1'])
    assert code == 0, out
    return root


def write_config(path, data_root, base=TINY_CONFIG, extra=''):
    """A config inheriting ``base`` with every data path set to
    ``data_root``."""
    root = f'{data_root}/'
    path.write_text(textwrap.dedent(f"""\
        _base_ = {base!r}
        train_dataloader = dict(dataset=dict(data_root={root!r}))
        val_dataloader = dict(dataset=dict(data_root={root!r}))
        test_dataloader = val_dataloader
        val_evaluator = dict(
            ann_file={root + 'annotations/instances_val.json'!r})
        test_evaluator = val_evaluator
        """) + extra)
    return str(path)


@pytest.fixture(scope='module')
def config(shapes, tmp_path_factory):
    path = tmp_path_factory.mktemp('cfg') / 'tiny.py'
    # The kill hook (tests/_crash_hook.py) is inert unless its env var is set.
    return write_config(path, shapes, extra=textwrap.dedent("""\
        custom_imports = dict(imports=['projects.codetr', '_crash_hook'],
                              allow_failed_imports=False)
        custom_hooks = [dict(type='KillAtIterHook')]
        """))


def dist_train(config, work_dir, *args, env=None):
    return run(['bash', 'tools/dist_train.sh', config, '2', '--work-dir',
                str(work_dir), *args], env=env)


def load(path):
    return torch.load(path, map_location='cpu', weights_only=False)


def assert_same(a, b, where=''):
    """Exact equality of nested checkpoint content."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f'{where}.{k}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f'{where}[{i}]')
    else:
        assert a == b, where


@pytest.fixture(scope='module')
def reference_run(config, tmp_path_factory):
    """An uninterrupted 2-epoch run with 2 processes; returns its work dir
    and output."""
    work_dir = tmp_path_factory.mktemp('ref')
    code, out = dist_train(config, work_dir)
    assert code == 0, out[-3000:]
    return work_dir, out


def test_dist_train_on_cpu_checks_data_and_shows_progress(reference_run):
    work_dir, out = reference_run
    assert 'using the gloo backend instead of nccl' in out
    assert 'data check: ' in out and 'eta: ' in out
    assert 'coco/bbox_mAP: ' in out  # validation after each epoch
    ckpt = load(work_dir / 'epoch_2.pth')
    assert (ckpt['meta']['epoch'], ckpt['meta']['iter']) == (2, 4)
    assert len(ckpt['rng_state']['states']) == 2  # one per process


def test_killed_run_resumes_to_the_uninterrupted_state(
        config, reference_run, tmp_path):
    ref_dir, run_dir = reference_run[0], tmp_path / 'run'
    # 4 images / (2 processes x 1) = 2 iterations per epoch: iteration 3 is
    # the first one of epoch 2, after epoch_1.pth was written.
    code, out = dist_train(config, run_dir,
                           env=dict(CODETR_TEST_KILL_AT_ITER='3'))
    assert code != 0
    assert not (run_dir / 'epoch_2.pth').exists()
    assert (run_dir / 'last_checkpoint').read_text().endswith('epoch_1.pth')

    code, out = dist_train(config, run_dir, '--resume')
    assert code == 0, out[-3000:]
    assert f'Resuming from {run_dir}/epoch_1.pth' in out
    assert 'resumed epoch: 1, iter: 2' in out
    assert 'Restored the random number generator states' in out

    ref, resumed = load(ref_dir / 'epoch_2.pth'), load(run_dir / 'epoch_2.pth')
    assert (resumed['meta']['epoch'], resumed['meta']['iter']) == (2, 4)
    for key in ('state_dict', 'optimizer', 'param_schedulers', 'rng_state'):
        assert_same(ref[key], resumed[key], key)

    # Curves of the resumed work dir: both runs' logs are merged.
    png = tmp_path / 'curves.png'
    code, out = run([sys.executable, 'tools/analysis/plot_curves.py',
                     str(run_dir), '--out', str(png), '--smooth', '2'])
    assert code == 0, out
    assert png.stat().st_size > 10000
    assert '4 loss curves, 3 metric curves from 2 log file(s)' in out


def test_dist_test_prints_coco_table_and_writes_results(
        config, reference_run, tmp_path):
    pkl = tmp_path / 'dets.pkl'
    code, out = run([
        'bash', 'tools/dist_test.sh', config,
        str(reference_run[0] / 'epoch_2.pth'), '2', '--work-dir',
        str(tmp_path), '--classwise', '--out', str(pkl), '--json-prefix',
        str(tmp_path / 'dets'), '--show-dir', str(tmp_path / 'vis'),
        '--score-thr', '0', '--cuda-graphs', '2'  # CPU: runs eagerly
    ])
    assert code == 0, out[-3000:]
    assert AP_LINE in out
    assert '| category | mAP' in out and '| circle' in out  # per class
    assert 'Epoch(test) [1/1]' in out and 'eta: ' in out  # progress
    with open(pkl, 'rb') as f:
        assert len(pickle.load(f)) == 2  # one entry per validation image
    assert (tmp_path / 'dets.bbox.json').is_file()
    # mmdet's visualizer draws on rank 0 only: its share of the images.
    assert os.listdir(tmp_path / 'vis') == ['000000.jpg']


def run_tool(script, args, monkeypatch):
    """Run tools/<script> in this process; return its exit message."""
    monkeypatch.syspath_prepend(osp.join(REPO, 'tools'))
    monkeypatch.setattr(sys, 'argv', [script, *args])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(osp.join(REPO, 'tools', script), run_name='__main__')
    return exc.value.code


@pytest.mark.parametrize('case', ['no_data', 'num_classes', 'resume_path',
                                  'checkpoint', 'amp_on_cpu'])
def test_bad_input_stops_with_a_clear_message(case, shapes, tmp_path,
                                              monkeypatch):
    cfg = write_config(tmp_path / 'c.py', shapes)
    script, args = 'train.py', [cfg]
    if case == 'no_data':
        cfg = write_config(tmp_path / 'c.py', tmp_path / 'missing')
        args = [cfg]
        expected = [f'Dataset folder not found: {tmp_path}/missing/',
                    'tools/generate_shapes_dataset.py --out']
    elif case == 'num_classes':
        args += ['--cfg-options', 'model.num_classes=80']
        expected = ['model.num_classes=80, but the dataset has 6 classes',
                    '--cfg-options model.num_classes=6']
    elif case == 'resume_path':
        args += ['--resume', str(tmp_path / 'x.pth')]
        expected = [f'checkpoint not found: {tmp_path}/x.pth']
    elif case == 'checkpoint':
        script, args = 'test.py', [cfg, str(tmp_path / 'x.pth')]
        expected = [f'Checkpoint not found: {tmp_path}/x.pth']
    else:
        args += ['--amp']
        expected = ['--amp needs a CUDA device']
    message = run_tool(script, [*args, '--work-dir', str(tmp_path)],
                       monkeypatch)
    assert message.startswith('error: ')
    for text in expected:
        assert text in message
    assert not (tmp_path / 'last_checkpoint').exists()


def test_help_documents_classwise_and_test_dev():
    code, out = run([sys.executable, 'tools/test.py', '--help'])
    assert code == 0
    for text in ('--classwise', '--json-prefix', '--format-only', 'test-dev',
                 '--show-dir'):
        assert text in out


def test_auto_resume_finds_checkpoint_of_moved_work_dir(tmp_path):
    (tmp_path / 'epoch_1.pth').write_bytes(b'x')
    (tmp_path / 'epoch_2.pth').write_bytes(b'x')
    (tmp_path / 'last_checkpoint').write_text('/old/place/epoch_1.pth')
    found = find_resume_checkpoint(str(tmp_path))
    assert found == str(tmp_path / 'epoch_1.pth')
    (tmp_path / 'last_checkpoint').unlink()
    os.utime(tmp_path / 'epoch_1.pth', (1, 1))  # older than epoch_2.pth
    found = find_resume_checkpoint(str(tmp_path))
    assert found == str(tmp_path / 'epoch_2.pth')

    from mmengine.config import Config
    cfg = Config(dict(work_dir=str(tmp_path / 'empty')))
    assert set_resume(cfg, 'auto', log=lambda s: None) is None
    assert cfg.resume is False
    with pytest.raises(RunConfigError, match='checkpoint not found'):
        set_resume(cfg, str(tmp_path / 'nope.pth'))


def test_rng_state_round_trip_is_weights_only_loadable(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    state = get_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    torch.save(state, tmp_path / 's.pth')
    set_rng_state(torch.load(tmp_path / 's.pth', weights_only=True))
    assert (random.random(), np.random.rand(),
            torch.rand(1).item()) == expected


class _OnTheGPU(torch.Tensor):
    """A tensor that host code refuses like one on a GPU (where mmengine's
    resume loads the checkpoint): ``numpy()`` raises until ``cpu()``."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.numpy:
            raise TypeError("can't convert cuda:0 device type tensor to "
                            'numpy. Use Tensor.cpu() to copy the tensor to '
                            'host memory first.')
        if func is torch.Tensor.cpu:
            return args[0].as_subclass(torch.Tensor).clone()
        return super().__torch_function__(func, types, args, kwargs or {})


def test_rng_state_restored_from_tensors_loaded_onto_a_gpu():
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    state = get_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    name, keys, *rest = state['numpy']
    state['numpy'] = (name, keys.as_subclass(_OnTheGPU), *rest)
    state['torch'] = state['torch'].as_subclass(_OnTheGPU)
    set_rng_state(state)
    assert (random.random(), np.random.rand(),
            torch.rand(1).item()) == expected


def test_rng_restored_after_batches_replayed_by_iteration_loop():
    """IterBasedTrainLoop replays the trained batches on resume; the saved
    random state must apply to the first new batch, not before the replay."""
    torch.manual_seed(5)
    saved = get_rng_state()
    expected = torch.rand(1)
    draws = []

    def batches():  # loading draws numbers, as a main-process pipeline does
        while True:
            draws.append(torch.rand(1))
            yield len(draws)

    loop = SimpleNamespace(iter=2, dataloader_iterator=batches())
    runner = SimpleNamespace(train_loop=loop, _resume=True,
                             logger=logging.getLogger(__name__))
    hook = RNGStateHook()
    hook.after_load_checkpoint(
        runner, {'rng_state': dict(world_size=1, states=[saved])})
    torch.manual_seed(0)
    hook.before_train_epoch(runner)
    assert [next(loop.dataloader_iterator) for _ in range(3)] == [1, 2, 3]
    assert not torch.equal(draws[1], expected)
    assert torch.equal(draws[2], expected)
