"""tools/dist_train.sh on a GPU (NCCL, one rank, ``--amp``) killed by
SIGKILL mid-epoch after a checkpoint, then ``--resume``d: it continues to
the result of an uninterrupted run; tools/dist_test.sh then prints the COCO
table that tools/test.py prints.

mmengine loads a resumed checkpoint onto the GPU, random states included:
the resumed run must restore them from CUDA tensors (it stopped with
``TypeError: can't convert cuda:0 device type tensor to numpy`` in
``RNGStateHook.before_train_epoch`` before ``set_rng_state`` moved them to
the host).

Exactness: on a GPU two uninterrupted runs differ already. mmcv's
deformable-attention and RoIAlign backward kernels add gradients with
atomics, whose order varies, and Adam turns a sign flip of a near-zero
gradient into a full step of the learning rate. So the resumed run is held
to the noise of the uninterrupted one, measured in every run of this test
(a second uninterrupted run): RESUME_NOISE_FACTOR times it, in medians
(docs/testing.md gives the values measured on an H200). Everything that is
not float arithmetic is compared exactly: counters, schedulers, loss scale,
random states.
"""
import pickle
import sys

import pytest
import torch
from gpu_testing import (coco_tables, finish, make_shapes, record, start,
                         tiny_config, train_losses, weight_diffs)
from test_tools import AP_LINE, assert_same, load

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

# 6 images, 1 per step on one GPU: 6 iterations per epoch, 2 epochs.
NUM_TRAIN, ITERS_PER_EPOCH, EPOCHS = 6, 6, 2
KILL_AT = ITERS_PER_EPOCH + 3  # mid epoch 2, after epoch_1.pth
# The resumed run may differ from the uninterrupted one by this many times
# as much as two uninterrupted runs differ from each other (medians over
# all weights and over the losses logged after the kill), or by the floors:
# weights (absolute; the learning rate is 2e-4, then 2e-5), losses
# (relative).
RESUME_NOISE_FACTOR = 4
WEIGHT_FLOOR = 1e-8
LOSS_FLOOR = 1e-5


@pytest.fixture(scope='module')
def config(tmp_path_factory):
    root = make_shapes(tmp_path_factory.mktemp('shapes'), NUM_TRAIN, 2)
    return tiny_config(tmp_path_factory.mktemp('cfg') / 'tiny.py', root)


def dist_train(config, work_dir, *args, env=None):
    return start(['bash', 'tools/dist_train.sh', config, '1', '--amp',
                  '--work-dir', str(work_dir), *args], env=env)


@pytest.fixture(scope='module')
def runs(config, tmp_path_factory):
    """Two uninterrupted runs and a killed one (at once: they share the
    GPU), then the resumed one. Returns ``{name: (work dir, exit code,
    output)}``."""
    dirs = {name: tmp_path_factory.mktemp(name)
            for name in ('ref', 'ref2', 'run')}
    procs = {
        'ref': dist_train(config, dirs['ref']),
        'ref2': dist_train(config, dirs['ref2']),
        'killed': dist_train(config, dirs['run'],
                             env=dict(CODETR_TEST_KILL_AT_ITER=str(KILL_AT))),
    }
    done = {name: (dirs.get(name, dirs['run']), *finish(proc))
            for name, proc in procs.items()}
    # what the kill left, before the resumed run adds to it
    done['after_kill'] = (
        (dirs['run'] / f'epoch_{EPOCHS}.pth').exists(),
        (dirs['run'] / 'last_checkpoint').read_text())
    done['resumed'] = (dirs['run'],
                       *finish(dist_train(config, dirs['run'], '--resume')))
    return done


def test_uninterrupted_amp_run_trains_with_nccl_on_the_gpu(runs):
    work_dir, code, out = runs['ref']
    assert code == 0, out[-3000:]
    assert 'using the gloo backend' not in out  # a CUDA device was found
    assert "'backend': 'nccl'" in out and 'GPU number: 1' in out
    ckpt = load(work_dir / f'epoch_{EPOCHS}.pth')
    assert 'loss_scaler' in ckpt['optimizer']  # AmpOptimWrapper
    assert 'cuda' in ckpt['rng_state']['states'][0]
    losses = train_losses(work_dir)
    assert sorted(losses) == list(range(1, EPOCHS * ITERS_PER_EPOCH + 1))
    assert all(torch.isfinite(torch.tensor(v['loss'])) for v in
               losses.values())


def test_killed_run_resumes_to_the_uninterrupted_result(runs):
    ref_dir, code, out = runs['ref']
    assert code == 0, out[-3000:]
    run_dir, code, out = runs['killed']
    assert code != 0
    last_epoch_written, last_checkpoint = runs['after_kill']
    assert not last_epoch_written
    assert last_checkpoint.endswith('epoch_1.pth')

    _, code, out = runs['resumed']
    assert code == 0, out[-3000:]
    assert f'resumed epoch: 1, iter: {ITERS_PER_EPOCH}' in out
    assert 'Restored the random number generator states' in out

    ref = load(ref_dir / f'epoch_{EPOCHS}.pth')
    ref2 = load(runs['ref2'][0] / f'epoch_{EPOCHS}.pth')
    resumed = load(run_dir / f'epoch_{EPOCHS}.pth')
    assert (resumed['meta']['epoch'], resumed['meta']['iter']) == \
        (EPOCHS, EPOCHS * ITERS_PER_EPOCH)
    # Not float arithmetic: exactly as uninterrupted (the random states of
    # every generator, CUDA's too, and the AMP loss scale).
    for key in ('param_schedulers', 'rng_state'):
        assert_same(ref[key], resumed[key], key)
    assert_same(ref['optimizer']['loss_scaler'],
                resumed['optimizer']['loss_scaler'], 'loss_scaler')

    # Medians: a broken resume (other augmentations, learning rate or
    # noise) moves every weight and loss; the atomics' noise moves few of
    # them far (Adam) and most not at all.
    noise = weight_diffs(ref['state_dict'], ref2['state_dict'])
    diff = weight_diffs(ref['state_dict'], resumed['state_dict'])
    bound = max(RESUME_NOISE_FACTOR * noise['median'], WEIGHT_FLOOR)
    record('resume: weights |resumed - uninterrupted|', median=diff['median'],
           max=diff['max'], at=diff['at'], noise_median=noise['median'],
           noise_max=noise['max'], bound=bound)
    assert diff['median'] <= bound, (diff, noise)

    ref_losses = train_losses(ref_dir)
    after = range(ITERS_PER_EPOCH + 1, EPOCHS * ITERS_PER_EPOCH + 1)

    def relative(other):
        # relative, except near zero (a loss without positives)
        return torch.tensor([
            abs(other[i][k] - ref_losses[i][k]) / max(abs(ref_losses[i][k]),
                                                      1e-2)
            for i in after for k in ref_losses[i]
        ])

    loss_noise = relative(train_losses(runs['ref2'][0]))
    loss_diff = relative(train_losses(run_dir))
    loss_bound = max(RESUME_NOISE_FACTOR * float(loss_noise.median()),
                     LOSS_FLOOR)
    record('resume: losses after the kill, relative',
           median=loss_diff.median(), max=loss_diff.max(),
           noise_median=loss_noise.median(), noise_max=loss_noise.max(),
           bound=loss_bound)
    assert float(loss_diff.median()) <= loss_bound, (loss_diff, loss_noise)


def test_dist_test_prints_the_table_of_test_py(config, runs, tmp_path):
    ref_dir, code, out = runs['ref']
    assert code == 0, out[-3000:]
    checkpoint = str(ref_dir / f'epoch_{EPOCHS}.pth')
    dist = start(['bash', 'tools/dist_test.sh', config, checkpoint, '1',
                  '--work-dir', str(tmp_path / 'dist'), '--out',
                  str(tmp_path / 'dist.pkl')])
    single = start([sys.executable, 'tools/test.py', config, checkpoint,
                    '--work-dir', str(tmp_path / 'single'), '--out',
                    str(tmp_path / 'single.pkl')])
    (dist_code, dist_out), (code, single_out) = finish(dist), finish(single)
    assert dist_code == 0, dist_out[-3000:]
    assert code == 0, single_out[-3000:]
    assert AP_LINE in dist_out
    (dist_table, ), (single_table, ) = coco_tables(dist_out), coco_tables(
        single_out)
    assert dist_table == single_table
    # the detections behind the tables, not only the (small) AP values
    with open(tmp_path / 'dist.pkl', 'rb') as f:
        dist_dets = pickle.load(f)
    with open(tmp_path / 'single.pkl', 'rb') as f:
        single_dets = pickle.load(f)
    assert len(dist_dets) == len(single_dets) == 2
    for a, b in zip(dist_dets, single_dets):
        assert len(a['pred_instances']['scores']) > 0
        assert_same(a['pred_instances'], b['pred_instances'], 'detections')
    # ... and the validation after the last training epoch (same weights,
    # same pipeline) printed it too.
    assert coco_tables(out)[-1] == dist_table
    record('dist_test.sh vs test.py: COCO table', identical=True,
           ap=dist_table[0].split('=')[-1].strip())
