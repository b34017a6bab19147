"""The convergence benchmark's driver: the arms' configs, their processes.

Each arm trains from a small derived config ``WORK/configs/<arm>.py``
(:func:`derived_config`) in its own ``tools/train.py`` process
(:func:`start_arm`); :func:`run` generates the data, starts every arm,
polls them and summarises (:mod:`.convergence_report`). What is measured,
and why the schedule is rewritten rather than overridden, is described in
``tools/analysis/convergence.py``, the command line.
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

from . import REPO_ROOT as REPO
from .convergence_arms import ARMS, SEED, lr_step_at
from .convergence_report import summarize, write_atomic
from .curves import find_scalar_files

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
                    f'unexpected LR step in the configs: {sched}; update '
                    'projects/codetr/analysis/convergence.py:schedule()')
            sched.update(end=iters, milestones=[lr_step_at(iters)])
        out.append(sched)
    return out


def derived_config(arm: str,
                   iters: int,
                   val_interval: int,
                   data_root: str,
                   seed: int = SEED) -> str:
    """Text of the config that trains ``arm`` for ``iters`` iterations,
    validating and checkpointing every ``val_interval``, on ``data_root``,
    with training seed ``seed``."""
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
# at {lr_step_at(iters)}, seed {seed}. Everything else is the arm's config.
_base_ = {arm_config!r}

max_iters = {iters}
train_cfg = dict(max_iters=max_iters, val_interval={val_interval})
param_scheduler = [
    {schedulers}
]
default_hooks = dict(
    checkpoint=dict(interval={val_interval}),
    logger=dict(interval={log_interval}))
randomness = dict(seed={seed})

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
        derived_config(arm, args.iters, args.val_interval, args.data_root,
                       args.seed))
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
        seed=args.seed,
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
