"""The convergence benchmark (tools/analysis/convergence.py over
projects/codetr/analysis/convergence*.py): the per-arm configs and the
summary, on fabricated logs (no training)."""
import json

import pytest
from mmengine.config import Config

from projects.codetr.analysis import convergence as conv  # the driver
from projects.codetr.analysis import convergence_arms as conv_arms
from projects.codetr.analysis import convergence_report as report

pytestmark = pytest.mark.slow  # runs the convergence driver on generated data

HEADS = ('rpn_head', 'roi_head', 'bbox_head', 'with_pos_coord')


def derived(tmp_path, arm, iters, val_interval, seed=conv_arms.SEED):
    path = tmp_path / f'{arm}_{iters}_{seed}.py'
    path.write_text(
        conv.derived_config(arm, iters, val_interval, str(tmp_path / 'd'),
                            seed))
    return Config.fromfile(str(path), import_custom_modules=False)


@pytest.mark.parametrize('iters,val_interval,step', [(2000, 500, 1600),
                                                     (20, 10, 16),
                                                     (1234, 300, 987)])
def test_schedule_follows_iterations(tmp_path, iters, val_interval, step):
    cfg = derived(tmp_path, 'k2', iters, val_interval)
    assert cfg.train_cfg.type == 'IterBasedTrainLoop'
    assert (cfg.train_cfg.max_iters,
            cfg.train_cfg.val_interval) == (iters, val_interval)
    warmup, lr_step = cfg.param_scheduler
    assert (warmup.type, warmup.end) == ('LinearLR', 200)
    assert (lr_step.type, lr_step.end, lr_step.milestones) == ('MultiStepLR',
                                                               iters, [step])
    assert cfg.default_hooks.checkpoint.interval == val_interval
    # inherited from the arm's config (validation scalars at the iteration)
    assert cfg.default_hooks.logger.log_metric_by_epoch is False
    assert cfg.randomness.seed == 0
    root = str(tmp_path / 'd') + '/'
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[loader].dataset.data_root == root
    assert cfg.val_evaluator.ann_file == root + \
        'annotations/instances_val.json'
    assert conv_arms.expected_val_iters(iters, val_interval)[-1] == iters
    assert conv_arms.expected_val_iters(1234, 300) == [
        300, 600, 900, 1200, 1234
    ]


def test_seed_option_sets_the_training_seed_only(tmp_path):
    seed0 = derived(tmp_path, 'dab_k2', 20, 10).to_dict()
    seed1 = derived(tmp_path, 'dab_k2', 20, 10, seed=1).to_dict()
    assert (seed0.pop('randomness'), seed1.pop('randomness')) == (
        dict(seed=0), dict(seed=1))
    assert seed0 == seed1


def test_arms_differ_only_in_their_heads(tmp_path):
    cfgs = {
        arm: derived(tmp_path, arm, 20, 10).to_dict()
        for arm in conv_arms.ARMS
    }
    present = {
        arm: tuple(h for h in HEADS[:3] if cfg['model'][h] is not None)
        for arm, cfg in cfgs.items()
    }
    assert present == dict(
        k0=(),
        atss=('bbox_head', ),
        rcnn=('rpn_head', 'roi_head'),
        k2=('rpn_head', 'roi_head', 'bbox_head'),
        nopos=('rpn_head', 'roi_head', 'bbox_head'),
        dino_k0=(),
        dino_k2=('rpn_head', 'roi_head', 'bbox_head'),
        dab_k0=(),
        dab_k2=('rpn_head', 'roi_head', 'bbox_head'))
    assert [
        arm for arm, cfg in cfgs.items() if not cfg['model']['with_pos_coord']
    ] == ['nopos']
    # every family's arms: the same data, schedule, seed
    for key in ('train_dataloader', 'val_dataloader', 'train_cfg',
                'param_scheduler', 'randomness', 'val_evaluator'):
        for arm in ('dino_k2', 'dab_k2'):
            assert cfgs[arm][key] == cfgs['k2'][key], (arm, key)
    for cfg in cfgs.values():
        for head in HEADS:
            del cfg['model'][head]
    # within a family, only the auxiliary heads differ
    for family, reference in ((conv_arms.DEFAULT_ARMS, 'k2'),
                              (('dino_k0', 'dino_k2'), 'dino_k2'),
                              (('dab_k0', 'dab_k2'), 'dab_k2')):
        for arm in family:
            assert cfgs[arm] == cfgs[reference], arm


def _scalars(path, lines):
    path.mkdir(parents=True)
    (path /
     'scalars.json').write_text(''.join(json.dumps(x) + '\n'
                                        for x in lines) + '{"loss": 1.')


def _train(step, loss):
    return dict(
        lr=1e-4,
        loss=loss,
        loss_cls=loss / 3,
        time=0.5,
        iter=step,
        memory=10,
        step=step)


def _val(step, m):
    return {
        'coco/bbox_mAP': m,
        'coco/bbox_mAP_50': m + 0.2,
        'coco/bbox_mAP_75': m / 2,
        'data_time': 0.1,
        'time': 0.2,
        'step': step
    }


def test_summary_tables_name_failed_and_incomplete_arms(tmp_path):
    work = tmp_path / 'work'
    logs = {  # arm -> (exit code, logged lines)
        'k0': (0, [_train(10, 9.), _val(10, .1), _train(20, 8.),
                   _val(20, .25)]),
        'k2': (0, [_train(10, 30.), _val(10, .05), _train(20, 25.),
                   _val(20, .3)]),
        'atss': (1, [_train(10, 20.), _val(10, .125), _train(20, 19.)]),
        'rcnn': (0, [_train(10, 20.), _train(20, 19.), _val(20, .2)]),
    }
    arms = {}
    for arm, (rc, lines) in logs.items():
        _scalars(work / arm / '20240101_000000' / 'vis_data', lines)
        arms[arm] = dict(
            config=conv_arms.ARMS[arm][1],
            device='cpu',
            log=f'{work}/{arm}.log',
            pid=None,
            rc=rc,
            state='done' if rc == 0 else f'failed (exit {rc})')
    settings = dict(
        iters=20,
        val_interval=10,
        amp=False,
        data_root='d',
        num_train=40,
        num_val=10,
        train_args=[])
    (work / 'status.json').write_text(
        json.dumps(dict(settings=settings, arms=arms)))

    assert report.summarize(str(work)) is False
    md = (work / 'convergence.md').read_text()
    header = ('| iteration | K=0 | K=1 ATSS | K=1 Faster R-CNN '
              '| K=2 (R-CNN + ATSS) |')  # arms in the order of conv_arms.ARMS
    assert md.count(header) == 3
    assert '| 10 | 0.100 | 0.125 | - | 0.050 |' in md  # mAP
    assert '| 20 | 0.250 | - | 0.200 | 0.300 |' in md
    assert '| 10 | 0.300 | 0.325 | - | 0.250 |' in md  # mAP50
    assert '| 20 | 0.125 | - | 0.100 | 0.150 |' in md  # mAP75
    assert f'**failed (exit 1)** (see {work}/atss.log) - no mAP at [20]' in md
    assert '**incomplete**' in md and 'no mAP at [10]' in md
    assert '| k0: K=0 | configs/shapes/co_deformable_detr_r18_scratch_' \
        'shapes_k0.py | cpu | done | 20 |' in md

    result = json.loads((work / 'convergence.json').read_text())['arms']
    assert result['k2']['mAP'] == {'10': 0.05, '20': 0.3}
    assert result['atss']['mAP50'] == {'10': 0.325}
    assert (result['atss']['state'],
            result['atss']['last_iter']) == ('failed (exit 1)', 20)
    assert result['rcnn']['state'] == 'incomplete'
    assert (work / 'convergence.png').stat().st_size > 20000
    progress = (work / 'progress.txt').read_text().splitlines()
    assert progress[2].split() == [
        'k0', 'cpu', '20/20', '0.250', '@20', '-', 'done'
    ]
    assert progress[3].split() == [
        'atss', 'cpu', '20/20', '0.125', '@10', '-', 'failed', '(exit', '1)'
    ]
