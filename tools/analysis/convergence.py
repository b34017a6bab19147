"""Convergence benchmark: which auxiliary heads make Co-DETR learn faster?

Trains five arms of Co-Deformable-DETR (ResNet-18 from scratch, the
``configs/shapes/co_deformable_detr_r18_scratch_shapes*.py`` configs) on the
generated shapes data for the same number of iterations and reads the COCO
box mAP that each run computes on the validation split every
``--val-interval`` iterations (mmengine's ``IterBasedTrainLoop`` with the
config's ``CocoMetric``; no separate test pass):

    ====== =====================================================
    k0     K=0, no auxiliary head (the Deformable-DETR++ baseline)
    atss   K=1, ATSS only
    rcnn   K=1, Faster R-CNN (RPN + RoI head) only
    k2     K=2, Faster R-CNN + ATSS (the default)
    nopos  K=2 without customised positive queries
           (``with_pos_coord=False``: the heads supervise the encoder only)
    ====== =====================================================

The arms differ only in the model's heads: data, seed (0), schedule, batch
size and ``--amp`` are the same. Each arm is one ``tools/train.py`` process
with its own work dir ``WORK/<arm>`` and log ``WORK/<arm>.log``; all start
at once, assigned round-robin to the visible GPUs (``CUDA_VISIBLE_DEVICES``),
so several share a GPU; without a GPU they run on the CPU (smoke tests).

Usage (``bash tools/analysis/run_convergence.sh`` passes its arguments
here)::

    python tools/analysis/convergence.py [WORK] [--iters 2000]
        [--val-interval 500] [--amp] [--arms k0 k2 ...]
        [--data-root data/shapes] [--num-train 2000] [--num-val 200]
        [-- extra tools/train.py arguments]
    python tools/analysis/convergence.py WORK --summarize-only

``WORK`` defaults to ``work_dirs/convergence``. ``ITERS``,
``VAL_INTERVAL``, ``ARMS`` (space-separated), ``DATA_ROOT``,
``NUM_TRAIN`` and ``NUM_VAL`` in the environment set the defaults of the
options of the same name. The data is generated first with
``tools/generate_shapes_dataset.py --seed 0`` (kept if already there with
the same parameters).

Schedule: the configs set ``max_iters = 1000`` and derive the LR step from it
at parse time (``milestones=[int(max_iters * 0.8)]``), so overriding
``max_iters`` alone would leave the step where it was. Each arm therefore
trains from a small derived config ``WORK/configs/<arm>.py`` (``_base_`` =
the arm's config) that sets ``max_iters``, ``train_cfg`` (``max_iters``,
``val_interval``), the LR step (``end = max_iters``, milestone at 80 %), the
checkpoint interval (= validation interval) and the data root together. It
also logs validation scalars at the training iteration
(``log_metric_by_epoch=False``): mmengine's default logs them at
``runner.epoch``, which an iteration-based loop leaves at 0. The linear
warm-up keeps the configs' 200 iterations.

Outputs, while the runs go (every ``--poll`` seconds) and at the end:

* ``WORK/progress.txt``: per arm its state, device, last logged iteration,
  latest mAP and a rough ETA (``cat`` it to follow a detached run);
* ``WORK/convergence.md`` / ``.json``: mAP, mAP50 and mAP75 per validation
  iteration (rows) and arm (columns), and each arm's state; an arm that
  failed or misses an evaluation is named there;
* ``WORK/convergence.png``: every arm's mAP curve (right) and smoothed total
  training loss (left; it includes the auxiliary losses, so its level differs
  between arms by construction).

``--summarize-only`` writes these three from the logs as they are, e.g.
while the runs are still going. The driver exits with 1 if an arm failed
or a validation result is missing. Stop the whole benchmark with
``kill <driver pid>`` (it stops the arms and summarises) or
``kill -- -<process group>`` when started with ``setsid``.

Time: about ITERS x (seconds per iteration while five processes share the
GPU) plus ITERS / VAL_INTERVAL evaluations of the validation images per
arm; ``progress.txt`` shows the measured time per iteration and an ETA once
the first training line is logged. No GPU timing was taken for this script.
On two CPU cores (another job running beside it) the smoke run of all five
arms, ``--iters 20 --val-interval 10 --num-train 40 --num-val 10 --
--cfg-options train_dataloader.batch_size=1``, took 26 minutes and about
2.5-3 GB of memory per arm; with the configs' batch of 4 an arm needs
about 7.5 GB on the CPU.
"""
import argparse
import datetime
import json
import os
import os.path as osp
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from compare_runs import plot_runs  # noqa: E402
from plot_curves import find_scalar_files, read_scalars  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
_CFG = 'configs/shapes/co_deformable_detr_r18_scratch_shapes'
# name -> (label in tables and plots, config relative to the repository)
ARMS = {
    'k0': ('K=0', f'{_CFG}_k0.py'),
    'atss': ('K=1 ATSS', f'{_CFG}_atss.py'),
    'rcnn': ('K=1 Faster R-CNN', f'{_CFG}_rcnn.py'),
    'k2': ('K=2 (R-CNN + ATSS)', f'{_CFG}.py'),
    'nopos': ('K=2, no pos. queries', f'{_CFG}_nopos.py'),
}
METRICS = {  # name in the results -> key logged by CocoMetric
    'mAP': 'coco/bbox_mAP',
    'mAP50': 'coco/bbox_mAP_50',
    'mAP75': 'coco/bbox_mAP_75',
}
TITLES = dict(mAP='box mAP@[.5:.95]', mAP50='box mAP@.5', mAP75='box mAP@.75')
SEED = 0
LR_STEP = (4, 5)  # the configs' milestones=[int(max_iters * 0.8)], exactly


def lr_step_at(iters: int) -> int:
    """The LR step of an ``iters``-iteration run: ``floor(0.8 * iters)`` in
    integer arithmetic."""
    return iters * LR_STEP[0] // LR_STEP[1]


def expected_val_iters(iters: int, val_interval: int) -> List[int]:
    """Iterations at which ``IterBasedTrainLoop`` validates: every
    ``val_interval`` and after the last one."""
    return sorted(set(range(val_interval, iters + 1, val_interval)) | {iters})


# --------------------------------------------------------------- configs


def schedule(base_schedulers: Sequence[dict], base_iters: int,
             iters: int) -> List[dict]:
    """The configs' LR schedule for ``iters`` iterations: the step scheduler
    ends at ``iters`` and steps at 80 %; the warm-up is unchanged.

    Raises:
        ValueError: If the configs' step scheduler is not the one this
            function knows (``end=max_iters``, one milestone at 80 %).
    """
    out = []
    for sched in base_schedulers:
        sched = dict(sched)
        if sched['type'] == 'MultiStepLR':
            if (sched.get('end') != base_iters
                    or sched.get('milestones') != [lr_step_at(base_iters)]
                    or sched.get('by_epoch')):
                raise ValueError(
                    f'unexpected LR step in the configs: {sched}; '
                    f'update tools/analysis/convergence.py:schedule()')
            sched.update(end=iters, milestones=[lr_step_at(iters)])
        out.append(sched)
    return out


def derived_config(arm: str, iters: int, val_interval: int,
                   data_root: str) -> str:
    """Text of the config that trains ``arm`` for ``iters`` iterations,
    validating and checkpointing every ``val_interval``, on ``data_root``."""
    from mmengine.config import Config
    arm_config = osp.join(REPO, ARMS[arm][1])
    base = Config.fromfile(arm_config, import_custom_modules=False)
    base_iters = base.train_cfg.max_iters
    schedulers = ',\n    '.join(
        'dict(' + ', '.join(f'{k}={v!r}' for k, v in s.items()) + ')'
        for s in schedule(base.param_scheduler, base_iters, iters))
    root = osp.abspath(data_root).rstrip('/') + '/'
    log_interval = min(base.default_hooks.logger.interval, val_interval)
    return f'''\
# Written by tools/analysis/convergence.py: arm {arm!r} ({ARMS[arm][0]}),
# {iters} iterations, validation and checkpoint every {val_interval}, LR step
# at {lr_step_at(iters)}, seed {SEED}. Everything else is the arm's config.
_base_ = {arm_config!r}

max_iters = {iters}
train_cfg = dict(max_iters=max_iters, val_interval={val_interval})
param_scheduler = [
    {schedulers}
]
default_hooks = dict(
    checkpoint=dict(interval={val_interval}),
    # Validation scalars at the training iteration, not runner.epoch (0).
    logger=dict(interval={log_interval}, log_metric_by_epoch=False))
randomness = dict(seed={SEED})

data_root = {root!r}
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
'''


# --------------------------------------------------------------- results


def _pid_alive(pid: Optional[int]) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def read_status(work: str) -> dict:
    """``WORK/status.json`` as the driver last wrote it; an arm marked
    running whose process is gone (driver killed) becomes 'lost'."""
    with open(osp.join(work, 'status.json')) as f:
        status = json.load(f)
    for arm in status['arms'].values():
        if arm['state'] == 'running' and not _pid_alive(arm.get('pid')):
            arm['state'] = 'lost (process gone, driver stopped?)'
    return status


def collect(work: str, status: dict) -> Dict[str, dict]:
    """Per arm: its status plus the validation results by iteration, the
    training loss and the last logged iteration, from its scalars.json."""
    settings = status['settings']
    expected = expected_val_iters(settings['iters'], settings['val_interval'])
    results = {}
    for arm in [a for a in ARMS if a in status['arms']]:  # table order
        info = status['arms'][arm]
        files = find_scalar_files(osp.join(work, arm))
        train, val = read_scalars(files) if files else ({}, {})
        metrics = {name: val.get(key, {}) for name, key in METRICS.items()}
        # Training lines are logged every few iterations, validation at the
        # last one too.
        last_iter = max([*train.get('loss', {}), *metrics['mAP'], 0])
        missing = []  # evaluations that should have happened but did not
        if info['state'] != 'running':
            missing = [
                i for i in expected if i not in metrics['mAP'] and (
                    i <= last_iter or info['state'] == 'done')
            ]
        if info['state'] == 'done' and missing:
            info['state'] = 'incomplete'  # exit code 0, results missing
        step_time = train.get('time', {})
        results[arm] = dict(
            info,
            label=ARMS[arm][0],
            last_iter=int(last_iter),
            missing_evaluations=missing,
            seconds_per_iter=step_time[max(step_time)] if step_time else None,
            _train=train,
            _val=val)
        for name, values in metrics.items():
            results[arm][name] = dict(sorted(values.items()))
    return results


def _fmt(value: Optional[float]) -> str:
    return '-' if value is None else f'{value:.3f}'


def markdown(status: dict, results: Dict[str, dict]) -> str:
    """The tables of ``convergence.md``."""
    s = status['settings']
    arms = list(results)
    rows = set(expected_val_iters(s['iters'], s['val_interval']))
    rows = sorted(rows.union(*(r['mAP'] for r in results.values())))
    lines = [
        '# Convergence on the generated shapes data', '',
        f"{s['iters']} iterations, validation every {s['val_interval']}, "
        f"LR step at {lr_step_at(s['iters'])}, seed {SEED}, "
        f"{'AMP' if s['amp'] else 'fp32'}, data {s['data_root']} "
        f"({s['num_train']} training / {s['num_val']} validation images); "
        f"extra train.py arguments: {' '.join(s['train_args']) or 'none'}. "
        f"Summarised {datetime.datetime.now():%Y-%m-%d %H:%M}.", ''
    ]
    for name, key in METRICS.items():
        lines += [
            f'## COCO {TITLES[name]} (`{key}`) on val', '',
            'Row: the training iteration at which the model was '
            'evaluated.', '',
            '| iteration | ' + ' | '.join(results[a]['label']
                                          for a in arms) + ' |',
            '|---:|' + '---:|' * len(arms)
        ]
        lines += [
            f'| {i} | ' +
            ' | '.join(_fmt(results[a][name].get(i)) for a in arms) + ' |'
            for i in rows
        ]
        lines.append('')
    lines += [
        '## Arms', '',
        '| arm | config | device | state | last logged iteration |',
        '|---|---|---|---|---:|'
    ]
    for arm, r in results.items():
        state = r['state']
        if state not in ('done', 'running'):
            state = f"**{state}** (see {r['log']})"
        if r['missing_evaluations']:
            state += f" - no mAP at {r['missing_evaluations']}"
        lines.append(f"| {arm}: {r['label']} | {r['config']} | "
                     f"{r['device']} | {state} | {r['last_iter']} |")
    return '\n'.join(lines) + '\n'


def progress_text(status: dict, results: Dict[str, dict]) -> str:
    """The lines of ``progress.txt``: one per arm."""
    iters = status['settings']['iters']
    lines = [
        f'{datetime.datetime.now():%Y-%m-%d %H:%M:%S}  {iters} '
        f'iterations per arm, validation every '
        f"{status['settings']['val_interval']}",
        f"{'arm':<7}{'device':<8}{'iter':>11}{'latest mAP':>14}"
        f"{'eta':>9}  state"
    ]
    for arm, r in results.items():
        latest = (f"{r['mAP'][max(r['mAP'])]:.3f} @{max(r['mAP'])}"
                  if r['mAP'] else '-')
        eta = '-'
        if r['state'] == 'running' and r['seconds_per_iter']:
            minutes = (iters - r['last_iter']) * r['seconds_per_iter'] / 60
            eta = f'{minutes:.0f} min'
        lines.append(f"{arm:<7}{r['device']:<8}{r['last_iter']:>6}/"
                     f"{iters:<5}{latest:>13}{eta:>9}  {r['state']}")
    return '\n'.join(lines) + '\n'


def _write(path: str, text: str) -> None:
    """Replace ``path`` at once, so a poller never reads half a file."""
    tmp = f'{path}.{os.getpid()}.tmp'  # --summarize-only may run meanwhile
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


def summarize(work: str, plot: bool = True) -> bool:
    """Write progress.txt and (with ``plot``) convergence.{md,json,png}.

    Returns:
        bool: Whether every arm finished with all its evaluations.
    """
    status = read_status(work)
    results = collect(work, status)
    _write(osp.join(work, 'progress.txt'), progress_text(status, results))
    if not plot:
        return False
    md = markdown(status, results)
    _write(osp.join(work, 'convergence.md'), md)
    public = {}  # results without the logged series
    runs = []  # label, training and validation series
    for arm, r in results.items():
        public[arm] = {k: v for k, v in r.items() if not k.startswith('_')}
        label = r['label']
        if r['state'] not in ('done', 'running'):
            label += f" ({r['state'].split(' ')[0]})"  # e.g. '(failed)'
        runs.append((label, r['_train'], r['_val']))
    text = json.dumps(dict(settings=status['settings'], arms=public), indent=1)
    _write(osp.join(work, 'convergence.json'), text + '\n')
    plot_runs(
        runs,
        'loss',
        METRICS['mAP'],
        window=5,
        out=osp.join(work, 'convergence.png'),
        loss_title='total training loss (auxiliary losses included)',
        metric_title='COCO box mAP on val',
        suptitle=f"Co-Deformable-DETR R18 from scratch, shapes data, "
        f"{status['settings']['iters']} iterations")
    print(md)
    print(f'wrote {work}/convergence.md, convergence.json, convergence.png')
    return all(r['state'] == 'done' for r in results.values())


# ------------------------------------------------------------------- run


def visible_gpus() -> List[str]:
    """The GPUs to spread the arms over, as CUDA_VISIBLE_DEVICES entries."""
    import torch
    if not torch.cuda.is_available():
        return []
    visible = os.environ.get('CUDA_VISIBLE_DEVICES')
    if visible:
        return [d.strip() for d in visible.split(',') if d.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def exit_state(rc: int) -> str:
    """An arm's state from the exit status of its process."""
    if rc == 0:
        return 'done'
    if rc > 0:
        return f'failed (exit {rc})'
    if rc == -signal.SIGKILL:  # usually the kernel's out-of-memory killer
        return 'killed (signal 9: out of memory?)'
    return f'killed (signal {-rc})'


def start_arm(arm: str, gpu: Optional[str], args: argparse.Namespace,
              train_args: List[str], threads: str):
    """Write the arm's config and start ``tools/train.py`` on ``gpu`` (CPU
    if None), logging to ``WORK/<arm>.log``.

    Returns:
        tuple[subprocess.Popen, dict]: The process and its status entry.
    """
    config = osp.join(args.work, 'configs', f'{arm}.py')
    _write(config,
           derived_config(arm, args.iters, args.val_interval, args.data_root))
    env = dict(os.environ)
    env.setdefault('OMP_NUM_THREADS', threads)
    if gpu is not None:
        env['CUDA_VISIBLE_DEVICES'] = gpu
    cmd = [sys.executable, 'tools/train.py', osp.abspath(config)]
    cmd += ['--work-dir', osp.abspath(osp.join(args.work, arm))]
    cmd += (['--amp'] if args.amp else []) + train_args
    log = osp.join(args.work, f'{arm}.log')
    with open(log, 'a') as f:
        f.write(f'$ CUDA_VISIBLE_DEVICES={gpu or ""} {" ".join(cmd)}\n')
        f.flush()
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    device = 'cpu' if gpu is None else f'gpu {gpu}'
    print(f'started {arm} on {device} (pid {proc.pid}), log {log}', flush=True)
    return proc, dict(
        config=ARMS[arm][1],
        device=device,
        log=log,
        pid=proc.pid,
        state='running',
        rc=None)


def run(args: argparse.Namespace, train_args: List[str]) -> bool:
    """Generate the data, start every arm, poll until all end, summarise."""
    work = args.work
    for arm in args.arms:
        if find_scalar_files(osp.join(work, arm)) and \
                '--resume' not in train_args:
            sys.exit(f'error: {work}/{arm} already holds a run; use another '
                     f'work dir, or pass `-- --resume` to continue it.')
    gpus = visible_gpus()
    if args.amp and not gpus:
        sys.exit('error: --amp needs a GPU; none is visible.')
    generate = [sys.executable, 'tools/generate_shapes_dataset.py']
    generate += ['--out', args.data_root, '--seed', str(SEED)]
    generate += ['--num-train', str(args.num_train)]
    generate += ['--num-val', str(args.num_val)]
    if subprocess.run(generate, cwd=REPO).returncode:
        sys.exit(f'error: {" ".join(generate)} failed')

    os.makedirs(osp.join(work, 'configs'), exist_ok=True)
    settings = dict(
        iters=args.iters,
        val_interval=args.val_interval,
        amp=args.amp,
        data_root=args.data_root,
        num_train=args.num_train,
        num_val=args.num_val,
        train_args=train_args)
    status = dict(settings=settings, arms={})
    procs: Dict[str, subprocess.Popen] = {}
    # Share the CPU cores among the processes (unless the user chose).
    threads = str(max(1, (os.cpu_count() or 1) // len(args.arms)))
    for i, arm in enumerate(args.arms):
        gpu = gpus[i % len(gpus)] if gpus else None  # round-robin
        procs[arm], status['arms'][arm] = start_arm(arm, gpu, args, train_args,
                                                    threads)

    def stop(signum, _frame):
        print(f'signal {signum}: stopping the arms', flush=True)
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        for arm, proc in procs.items():
            info = status['arms'][arm]
            if info['rc'] is None and proc.poll() is not None:
                info.update(
                    rc=proc.returncode, state=exit_state(proc.returncode))
                print(f"{arm}: {info['state']}", flush=True)
        _write(osp.join(work, 'status.json'), json.dumps(status, indent=1))
        if all(info['rc'] is not None for info in status['arms'].values()):
            break
        summarize(work, plot=False)
        time.sleep(args.poll)
    ok = summarize(work)
    if not ok:
        print('NOT every arm completed with all its evaluations:')
        for arm, info in status['arms'].items():
            if info['rc'] != 0:
                with open(info['log']) as f:
                    tail = ''.join(f.readlines()[-3:])
                print(f"== {arm}: {info['state']}, end of {info['log']}:\n"
                      f'{tail}')
    return ok


def parse_args(argv: Optional[Sequence[str]] = None):
    """The driver's options and the ``tools/train.py`` arguments after
    ``--``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args = []
    if '--' in argv:
        cut = argv.index('--')
        argv, train_args = argv[:cut], argv[cut + 1:]
    env = os.environ.get
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        epilog='See the top of tools/analysis/convergence.py.')
    parser.add_argument(
        'work',
        nargs='?',
        default='work_dirs/convergence',
        help='output folder of the benchmark (%(default)s)')
    parser.add_argument(
        '--iters',
        type=int,
        default=int(env('ITERS', 2000)),
        help='training iterations per arm (%(default)s)')
    parser.add_argument(
        '--val-interval',
        type=int,
        default=int(env('VAL_INTERVAL', 500)),
        help='validate and checkpoint every N iterations '
        '(%(default)s)')
    parser.add_argument(
        '--arms',
        nargs='+',
        choices=list(ARMS),
        default=env('ARMS', ' '.join(ARMS)).split(),
        help='arms to train (default: all five)')
    parser.add_argument(
        '--amp',
        action='store_true',
        help='mixed precision in every arm (GPU only)')
    parser.add_argument('--data-root', default=env('DATA_ROOT', 'data/shapes'))
    parser.add_argument(
        '--num-train', type=int, default=int(env('NUM_TRAIN', 2000)))
    parser.add_argument(
        '--num-val', type=int, default=int(env('NUM_VAL', 200)))
    parser.add_argument(
        '--poll',
        type=float,
        default=60,
        help='seconds between updates of progress.txt')
    parser.add_argument(
        '--summarize-only',
        action='store_true',
        help='only write the tables and the plot from the '
        'logs so far (runs may still be going)')
    args = parser.parse_args(argv)
    unknown = sorted(set(args.arms) - set(ARMS))  # from ARMS=...
    if unknown:
        parser.error(f'unknown arms {unknown}; choose from {list(ARMS)}')
    if args.val_interval < 1 or args.iters < args.val_interval:
        parser.error('need 1 <= --val-interval <= --iters')
    return args, train_args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, train_args = parse_args(argv)
    if args.summarize_only:
        return 0 if summarize(args.work) else 1
    return 0 if run(args, train_args) else 1


if __name__ == '__main__':
    sys.exit(main())
