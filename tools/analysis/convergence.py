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
checkpoint interval (= validation interval) and the data root together. The
linear warm-up keeps the configs' 200 iterations. Validation scalars are
logged at the training iteration because the arms' configs set
``log_metric_by_epoch=False`` (inherited by the derived configs).

Outputs, while the runs go (every ``--poll`` seconds) and at the end:
``WORK/progress.txt`` (per arm: state, last iteration, latest mAP, ETA) and
``WORK/convergence.md`` / ``.json`` / ``.png`` (mAP tables and curves); see
``convergence_report.py``, which writes them. The arms, seed and LR step
are defined in ``convergence_arms.py``.

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
import json
import os
import os.path as osp
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from convergence_arms import ARMS, DEFAULT_ARMS, SEED, lr_step_at  # noqa: E402
from convergence_report import summarize, write_atomic  # noqa: E402
from plot_curves import find_scalar_files  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


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
    logger=dict(interval={log_interval}))
randomness = dict(seed={SEED})

data_root = {root!r}
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
'''


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
    write_atomic(
        config,
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
        write_atomic(
            osp.join(work, 'status.json'), json.dumps(status, indent=1))
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
        default=env('ARMS', ' '.join(DEFAULT_ARMS)).split(),
        help='arms to train (default: the five Co-Deformable-DETR arms; '
        "'dino_k0 dino_k2' for Co-DINO)")
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
