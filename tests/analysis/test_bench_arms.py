"""The benchmark's arms: overrides reach the right config keys, the
optimizer wrapper is the one tools/train.py builds, and round-robin timing
runs every arm once per round with the first place rotating."""
import sys

import pytest
from codetr_testing import REPO_ROOT, build_model, tiny_model_cfg

from projects.codetr.analysis.bench_arms import (_round_robin,
                                                 build_optim_wrapper,
                                                 load_config)


def test_overrides_reach_model_and_optim_wrapper_keys():
    cfg = load_config("k2@query_head.batched_matching=False,"
                      "optim_wrapper.constructor='X',cuda_graphs=3")
    assert cfg.model.query_head.batched_matching is False
    assert cfg.model.cuda_graphs == 3
    assert cfg.optim_wrapper.constructor == 'X'
    assert 'constructor' not in cfg.model
    assert cfg.model.backbone.init_cfg is None  # no download


def test_config_optimizer_is_the_training_one():
    cfg = load_config('k2')
    model = build_model(tiny_model_cfg())
    merged = build_optim_wrapper(model, cfg, amp=False, optimizer='config')
    groups = merged.optimizer.param_groups
    assert type(merged).__name__ == 'BufferedGradNormOptimWrapper'
    assert merged.buffer_grad_norm  # as under the configs' runtime hook
    assert all(g['fused'] for g in groups)
    assert merged.clip_grad_kwargs == dict(max_norm=0.1, norm_type=2)
    # backbone and sampling offsets at 0.1x: two learning rates, few groups
    assert sorted({g['lr'] for g in groups}) == [2e-5, 2e-4]
    assert len(groups) == 2
    plain = build_optim_wrapper(model, cfg, amp=False, optimizer='plain')
    assert len(plain.optimizer.param_groups) == 1
    assert sum(len(g['params']) for g in groups) == len(
        [p for p in model.parameters() if p.requires_grad])


def test_round_robin_rotates_the_first_arm():
    order = []
    times = _round_robin(['a', 'b', 'c'], 3,
                         lambda arm: order.append(arm) or float(len(order)))
    assert order == ['a', 'b', 'c', 'b', 'c', 'a', 'c', 'a', 'b']
    assert {k: len(v) for k, v in times.items()} == {0: 3, 1: 3, 2: 3}
    assert times[0] == [1.0, 6.0, 8.0]  # arm 'a' ran 1st, 6th and 8th
    assert times[1] == [2.0, 4.0, 9.0]


@pytest.mark.slow  # the benchmark command line in a subprocess
def test_benchmark_runs_end_to_end_on_the_cpu(tmp_path):
    """The CLI's whole path (arms, table, stages, profile, JSON) on a tiny
    input: a smoke test, no timing is checked."""
    import json
    import subprocess
    out = tmp_path / 'bench.json'
    proc = subprocess.run([
        sys.executable, 'tools/analysis/benchmark.py', '--device', 'cpu',
        '--models', 'k0@query_head.batched_matching=False', '--precisions',
        'fp32', '--train-size', '128', '160', '--infer-size', '128', '160',
        '--warmup', '1', '--iters', '1', '--infer-iters', '1', '--stages',
        '--profile', 'k0@query_head.batched_matching=False', '--out',
        str(out)
    ], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '| k0@query_head.batched_matching=False | fp32 |' in proc.stdout
    assert 'stages of k0' in proc.stdout and 'backward' in proc.stdout
    assert 'profile of k0@query_head.batched_matching=False (fp32)' in \
        proc.stdout
    rows = json.loads(out.read_text())
    assert rows[0]['optimizer_groups'] == 2 and rows[0]['step_ms'] > 0


def test_a_failing_arm_is_left_out(capsys):
    """mmdet's Co-DINO cannot train under AMP: its arm is left out with a
    line saying why, and the other arms run."""
    import argparse

    from projects.codetr.analysis.bench_arms import build_arms
    args = argparse.Namespace(device='cpu', warmup=0, num_cp=None)
    assert build_arms(['no/such/config.py'], ['fp32'], args) == []
    assert 'no/such/config.py (fp32) failed, left out' in \
        capsys.readouterr().out


def test_the_benchmark_fails_when_no_arm_is_built():
    """Not an empty table and exit 0: the run fails and says why, so that
    the parent of the source arms' child process reports it too."""
    import subprocess
    proc = subprocess.run([
        sys.executable, 'tools/analysis/benchmark.py', '--device', 'cpu',
        '--models', 'no/such/config.py', '--precisions', 'fp32'
    ], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert 'no/such/config.py (fp32) failed, left out' in proc.stdout
    assert 'error: no arm could be built' in proc.stderr
    assert '| model |' not in proc.stdout


def test_back_to_back_steps_run_count_times_and_check_the_losses():
    import torch

    from projects.codetr.analysis.bench_arms import Arm
    arm = Arm.__new__(Arm)  # the timing alone, no model
    arm.name, arm.precision, arm.device = 'toy', 'fp32', 'cpu'
    losses = iter([1.0, 2.0, 3.0, 4.0, float('nan'), 5.0])
    arm.step = lambda: torch.tensor(next(losses))
    assert arm.timed_steps(4) > 0
    with pytest.raises(FloatingPointError, match='toy'):
        arm.timed_steps(2)  # the nan among them


def test_time_arms_takes_back_to_back_samples_when_asked():
    """``--back-to-back N``: each training sample comes from
    ``timed_steps(N)``; without it, from ``timed_step``."""
    import argparse

    import torch

    from projects.codetr.analysis.bench_arms import Arm, time_arms

    class Recorder(Arm):

        def __init__(self) -> None:
            self.name, self.precision, self.device = 'toy', 'fp32', 'cpu'
            self.calls, self.params_m, self.num_groups = [], 0.0, 1
            self.peak_gib, self.model = 0.0, torch.nn.Identity()

        def timed_step(self) -> float:
            self.calls.append(1)
            return 1.0

        def timed_steps(self, count: int) -> float:
            self.calls.append(count)
            return 2.0

        def make_predict(self, args):
            return lambda: None

    for count, expected in ((1, [1, 1]), (3, [3, 3])):
        arm = Recorder()
        args = argparse.Namespace(iters=2, infer_iters=1, warmup=0,
                                  device='cpu', back_to_back=count)
        rows = time_arms([arm], args)
        assert arm.calls == expected
        assert rows[0]['step_ms'] == (1000.0 if count == 1 else 2000.0)
