"""The tools/train.py throughput measurement: its command and its reading
of the runner's logged times."""
import json
import os
import os.path as osp

import pytest

from projects.codetr.analysis import REPO_ROOT
from projects.codetr.analysis.train_throughput import summarize, train_command


def write_scalars(work_dir, records):
    run = osp.join(work_dir, '20261203_000000', 'vis_data')
    os.makedirs(run)
    with open(osp.join(run, 'scalars.json'), 'w') as f:
        for record in records:
            f.write(json.dumps(record) + '\n')


def test_summarize_takes_medians_after_the_warm_up(tmp_path):
    records = [dict(step=10, time=9.0, data_time=5.0, loss=1.0)]
    records += [dict(step=s, time=t, data_time=d, loss=1.0)
                for s, t, d in [(20, 0.30, 0.01), (30, 0.20, 0.03),
                                (40, 0.25, 0.02)]]
    records.append({'coco/bbox_mAP': 0.1, 'step': 1})  # validation line
    write_scalars(str(tmp_path), records)
    result = summarize(str(tmp_path), skip=10)
    assert result['intervals'] == 3 and result['last_iter'] == 40
    assert result['iter_ms'] == pytest.approx(250.0)
    assert result['data_ms'] == pytest.approx(20.0)
    assert result['data_fraction'] == pytest.approx(0.08)


def test_summarize_says_when_nothing_was_logged_after_the_warm_up(tmp_path):
    write_scalars(str(tmp_path), [dict(step=10, time=1.0, data_time=0.1)])
    with pytest.raises(RuntimeError, match='after iteration 10'):
        summarize(str(tmp_path), skip=10)


@pytest.mark.parametrize('config,schedule', [
    ('configs/co_deformable_detr_r50_1x_coco.py',
     ['train_cfg.max_epochs=1', 'train_cfg.val_begin=2']),
    ('configs/shapes/co_deformable_detr_r18_scratch_shapes_k0.py',
     ['train_cfg.max_iters=7', 'train_cfg.val_interval=8']),
])
def test_train_command_trains_on_the_generated_data(config, schedule):
    command = train_command(osp.join(REPO_ROOT, config), 'gen', 'wd', 7,
                            extra_options=['tf32=True'])
    assert command[1].endswith(osp.join('tools', 'train.py'))
    options = command[command.index('--cfg-options') + 1:]
    root = osp.abspath('gen') + '/'
    assert f'train_dataloader.dataset.data_root={root}' in options
    assert f'val_evaluator.ann_file={root}annotations/instances_val.json' \
        in options
    assert all(s in options for s in schedule)
    # the generated classes: with COCO's names every box would be dropped
    assert 'train_dataloader.dataset.metainfo.classes=[circle,square,' \
        'triangle,star,cross,ring]' in options
    assert 'log_processor.window_size=10' in options
    assert options[-1] == 'tf32=True'
    assert '--skip-data-check' in command
