"""mmdet's own Co-DETR as benchmark arms: the child process loads the
analysis package without the plugin's registrations, source arms need a
checkout, and ratios across the processes go through the reference arm."""
import json
import subprocess
import sys

import pytest

from projects.codetr.analysis.bench_arms import (arm_tf32, load_config,
                                                 mmengine_amp_type)
from projects.codetr.analysis.mmdet_source import (ANALYSIS_DIR, BOOTSTRAP,
                                                   cross_ratio,
                                                   is_source_model,
                                                   source_config)


def run_in_child(code: str, *argv: str) -> None:
    """Run ``code`` after the child's bootstrap (the analysis package loaded
    as ``codetr_analysis``), then check that the plugin stayed out."""
    bootstrap = BOOTSTRAP.replace(
        'from codetr_analysis.mmdet_source import child_main\n'
        'child_main(sys.argv[1])\n', '').format(
            init=f'{ANALYSIS_DIR}/__init__.py', path=ANALYSIS_DIR)
    check = ('assert not any(m.startswith("projects.codetr") '
             'for m in sys.modules), "plugin imported"\n'
             'print("ok")\n')
    proc = subprocess.run([sys.executable, '-c', bootstrap + code + check,
                           *argv],
                          capture_output=True,
                          text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith('ok')


def test_child_bootstrap_registers_nothing_of_the_plugin():
    """mmdet's projects/CO-DETR registers CoDETR too: the child must load
    the analysis package without importing projects.codetr."""
    run_in_child('from codetr_analysis import bench_arms, benchmark\n'
                 'from mmdet.registry import MODELS\n'
                 'assert MODELS.get("CoDETR") is None\n')


def test_child_builds_the_reference_arm_without_the_plugin():
    """The child builds mmdet's Deformable DETR arm, optimizer wrapper
    included, without importing projects.codetr (an import of the plugin's
    engine from the wrapper's builder once broke every source arm)."""
    args = dict(device='cpu', num_cp=None, optimizer='config',
                batch_size=1, train_size=[64, 96], boxes=2,
                mmdet_source=None, source_process=True)
    run_in_child(
        'import argparse, json\n'
        'from mmdet.utils import register_all_modules\n'
        'register_all_modules()\n'
        'from codetr_analysis.bench_arms import Arm\n'
        'args = argparse.Namespace(**json.loads(sys.argv[1]))\n'
        'arm = Arm("mmdet-ddetr", "fp32", args)\n'
        'assert type(arm.optim_wrapper).__name__ == "OptimWrapper"\n'
        'clip = arm.optim_wrapper.clip_grad_kwargs\n'
        'assert clip["max_norm"] == 0.1, clip\n', json.dumps(args))


def test_mixed_precision_of_mmdets_own_arms_is_mmengines():
    assert mmengine_amp_type('OptimWrapper') == 'AmpOptimWrapper'
    assert mmengine_amp_type('mmengine.AmpOptimWrapper') == 'AmpOptimWrapper'
    with pytest.raises(ValueError, match='FusedAdamWOptimWrapper'):
        mmengine_amp_type('FusedAdamWOptimWrapper')


def test_source_arms_need_a_checkout(tmp_path):
    assert is_source_model('mmdet-codino@query_head.num_query=300')
    assert not is_source_model('mmdet-ddetr') and not is_source_model('k2')
    with pytest.raises(ValueError, match='--mmdet-source'):
        source_config('mmdet-codino', None)
    with pytest.raises(FileNotFoundError, match='v3.3.0'):
        source_config('mmdet-codino', str(tmp_path))


def test_cross_ratio_goes_through_the_reference_arm():
    rows = [
        dict(model='mmdet-ddetr', precision='fp32', step_ms=200.),
        dict(model='codino', precision='fp32', step_ms=500.),
        dict(model='codino', precision='amp', step_ms=300.),
        dict(model='mmdet-ddetr', precision='fp32', step_ms=250.,
             process='mmdet-source'),
        dict(model='mmdet-codino', precision='fp32', step_ms=1000.,
             process='mmdet-source'),
    ]
    # (500 / 200) / (1000 / 250): the source process ran 25% slower
    assert cross_ratio(rows, 'codino', 'mmdet-codino') == pytest.approx(0.625)
    assert cross_ratio(rows, 'codino', 'mmdet-codino', 'amp') is None
    assert cross_ratio(rows, 'k2', 'mmdet-codino') is None


def test_tf32_is_the_arms_override_else_the_configs_key():
    assert arm_tf32('k0') is False  # default_runtime.py: tf32 = False
    assert arm_tf32('k0@tf32=True') is True
    cfg = load_config('k0@tf32=True,query_head.num_query=30')
    assert 'tf32' not in cfg.model and cfg.model.query_head.num_query == 30
