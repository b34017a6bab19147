"""DAB-Deformable-DETR through the tools, like the other families:
``tools/dist_train.sh`` (2 CPU processes) trains the Co-DAB shapes config
(K=2) with validation, ``tools/test.py`` evaluates its checkpoint."""
import os.path as osp
import sys
import textwrap

import pytest
from test_tools import AP_LINE, REPO, dist_train, run, shapes, write_config

pytestmark = pytest.mark.slow  # the tools end to end
__all__ = ['shapes']  # the fixture: 4 training and 2 validation images

DAB_SHAPES = osp.join(REPO, 'configs', 'shapes',
                      'co_dab_deformable_detr_r18_scratch_shapes.py')


def test_co_dab_config_trains_with_dist_train_and_tests_with_test_py(
        shapes, tmp_path):
    config = write_config(
        tmp_path / 'dab.py',
        shapes,
        base=DAB_SHAPES,
        extra=textwrap.dedent("""\
            # 4 iterations of the shapes study's model on tiny images
            train_cfg = dict(max_iters=4, val_interval=4)
            param_scheduler = [dict(type='ConstantLR', factor=1.0,
                                    by_epoch=False, begin=0, end=4)]
            default_hooks = dict(checkpoint=dict(interval=4),
                                 logger=dict(interval=1))
            train_dataloader.update(batch_size=1, num_workers=0,
                                    persistent_workers=False)
            val_dataloader.update(num_workers=0, persistent_workers=False)
            """))
    work_dir = tmp_path / 'work'
    code, out = dist_train(config, work_dir)
    assert code == 0, out[-3000:]
    assert AP_LINE in out  # the validation after the last iteration
    code, out = run([
        sys.executable, 'tools/test.py', config,
        str(work_dir / 'iter_4.pth'), '--work-dir',
        str(tmp_path / 'test')
    ])
    assert code == 0, out[-3000:]
    assert AP_LINE in out
