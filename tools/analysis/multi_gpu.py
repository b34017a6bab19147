"""Multi-GPU checks: scaling, 1-GPU vs N-GPU objective, kill + resume,
distributed test, multi-node launch and a rank without boxes.

Runs on whatever GPUs are visible (N >= 2 for the distributed checks; with
one GPU only the single-GPU figures are measured) and prints one table per
check; ``WORK/multi_gpu.md`` and ``.json`` keep them, ``WORK/<check>*.log``
the output of every process. The checks (``--checks``, default all):

``scaling``
    Median train-step time, throughput and peak memory per GPU of the R50
    K=2 config (``configs/co_deformable_detr_r50_1x_coco.py``), 2 generated
    800x1216 images per GPU, on 1 GPU (plain process) and on N GPUs (NCCL,
    ``MMDistributedDataParallel``), fp32 and AMP. Scaling efficiency = N-GPU
    throughput / (N x 1-GPU throughput).
``agreement``
    The same 2N images and initial weights as one batch on 1 GPU and as
    N x 2 on N GPUs, a few optimisation steps (cuDNN TF32 off). The losses
    normalised by ``reduce_mean``-ed averages (DETR/ATSS, and the classifier
    through ``sync_cls_avg_factor``) must agree, as means over the ranks,
    with the 1-GPU losses; a second 1-GPU run with another torch seed tells
    which losses depend on random sampling (RPN and RoI samplers) and so
    cannot agree. Also for K=0 (no sampling at all), whose weights after the
    steps must agree too.
``empty-rank``
    N GPUs, the last rank's images have no boxes: the steps must finish
    (no hang: timeout), with finite losses and weights equal on all ranks.
``resume``
    ``tools/dist_train.sh`` on N GPUs, ResNet-18 shapes config, 60
    iterations, checkpoints every 20: an uninterrupted run, a second one (to
    measure the GPU's own run-to-run nondeterminism) and one killed with
    SIGKILL after iteration 50 and resumed with ``--resume``; the final
    weights are compared.
``dist-test``
    ``tools/test.py`` on 1 GPU vs ``tools/dist_test.sh`` on N GPUs with the
    uninterrupted run's checkpoint: mAP and every detection.
``multinode``
    Two "nodes" on this host (``NNODES=2``, ``NODE_RANK``, ``MASTER_ADDR=
    127.0.0.1``, N/2 GPUs each) train 20 iterations.

Usage::

    python tools/analysis/multi_gpu.py [WORK] [--checks scaling ...]

Not yet run on GPUs (no machine with two GPUs was lent when it was
written), so its duration is unknown; every check starts its processes
with timeouts.
"""
import argparse
import json
import os
import os.path as osp
import re
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import multi_gpu_report as report  # noqa: E402

CHECKS = ('scaling', 'agreement', 'empty-rank', 'resume', 'dist-test',
          'multinode')
K2 = osp.join(REPO, 'configs', 'co_deformable_detr_r50_1x_coco.py')
K0 = osp.join(REPO, 'configs', 'co_deformable_detr_r50_1x_coco_k0.py')
SHAPES = osp.join(REPO, 'configs', 'shapes',
                  'co_deformable_detr_r18_scratch_shapes.py')
WORKER = osp.join(REPO, 'tools', 'analysis', 'multi_gpu_worker.py')
ITER_RE = re.compile(r'Iter\(train\) \[\s*(\d+)/')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('work', nargs='?', default='work_dirs/multi_gpu')
    parser.add_argument('--checks', nargs='+', default=list(CHECKS),
                        choices=CHECKS)
    parser.add_argument('--timeout', type=int, default=900,
                        help='seconds before a process group counts as hung')
    parser.add_argument('--cpu-smoke', metavar='CONFIG',
                        help='no GPU: run every check with 2 CPU processes '
                        '(gloo) on this small config (all three roles) and '
                        'small images, to test this script itself')
    return parser.parse_args()


class Runner:
    """Starts commands with their output in ``WORK/<name>.log``."""

    def __init__(self, work: str, gpus: List[str]) -> None:
        self.work = work
        self.gpus = gpus
        self.port = 29500 + os.getpid() % 1000
        self.k2, self.k0, self.shapes = K2, K0, SHAPES
        self.worker_args: List[str] = []  # e.g. a smaller image size
        self.data_args = ['--num-train', '400', '--num-val', '100']

    def env(self, gpus: Optional[List[str]] = None, **extra) -> dict:
        env = dict(os.environ, PYTHONPATH=REPO + (
            ':' + os.environ['PYTHONPATH'] if 'PYTHONPATH' in os.environ
            else ''))
        if gpus is not None:
            env['CUDA_VISIBLE_DEVICES'] = ','.join(gpus)
        self.port += 1
        env.setdefault('PORT', str(self.port))
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def start(self, name: str, cmd: List[str], env: dict) -> subprocess.Popen:
        log = open(osp.join(self.work, f'{name}.log'), 'w')
        log.write('$ ' + ' '.join(cmd) + '\n')
        log.flush()
        # Own process group: a kill reaches torchrun and all its workers.
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT,
                                start_new_session=True)

    def wait(self, proc: subprocess.Popen, timeout: int) -> Optional[int]:
        """Return code, or None after killing a process that hung."""
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None

    def run(self, name: str, cmd: List[str], env: dict,
            timeout: int) -> Optional[int]:
        return self.wait(self.start(name, cmd, env), timeout)

    def log(self, name: str) -> str:
        with open(osp.join(self.work, f'{name}.log')) as f:
            return f.read()

    def worker(self, name: str, mode: str, nproc: int, args: List[str],
               timeout: int) -> dict:
        """Run the worker in ``nproc`` processes; its JSON or an error."""
        out = osp.join(self.work, f'{name}.json')
        if osp.exists(out):
            os.remove(out)
        args = args + self.worker_args
        if nproc == 1:
            cmd = [sys.executable, WORKER, mode]
        else:
            cmd = [sys.executable, '-m', 'torch.distributed.run',
                   f'--nproc_per_node={nproc}',
                   f'--master_port={self.port + 1}', WORKER, mode]
        code = self.run(name, cmd + args + ['--out', out],
                        self.env(self.gpus[:max(nproc, 1)]), timeout)
        if code is None:
            return dict(error=f'hung: killed after {timeout} s')
        if code != 0 or not osp.exists(out):
            tail = self.log(name).strip().splitlines()[-3:]
            return dict(error=f'exit {code}: ' + ' | '.join(tail)[-300:])
        with open(out) as f:
            return json.load(f)


def check_scaling(r: Runner, n: int, timeout: int) -> dict:
    rows = []
    for precision in ('fp32', 'amp') if r.gpus[0] else ('fp32', ):
        amp = ['--amp'] if precision == 'amp' else []
        for nproc in sorted({1, n}):
            res = r.worker(f'scaling_{nproc}gpu_{precision}', 'scaling',
                           nproc, ['--config', r.k2] + amp, timeout)
            res.update(gpus=nproc, precision=precision)
            rows.append(res)
            report.say(f'  {nproc} GPU {precision}: ' + (
                res['error'] if 'error' in res else
                f"{res['step_ms']:.0f} ms/step, {res['img_per_s']:.1f} "
                f"img/s, peak {max(res['peak_gib']):.2f} GiB"))
    return dict(rows=rows)


def check_agreement(r: Runner, n: int, timeout: int) -> dict:
    out = {}
    for name, config in (('k2', r.k2), ('k0', r.k0)):
        common = ['--config', config, '--total', str(2 * n), '--steps', '3',
                  '--no-tf32']
        runs = {}
        for tag, nproc, extra in (('1gpu', 1, []),
                                  ('1gpu_seed1', 1, ['--seed', '1']),
                                  (f'{n}gpu', n, [])):
            weights = osp.join(r.work, f'agreement_{name}_{tag}.pth')
            runs[tag] = r.worker(f'agreement_{name}_{tag}', 'agreement',
                                 nproc, common + extra + [
                                     '--save-weights', weights], timeout)
            runs[tag]['weights_file'] = weights
        one, other_seed, many = runs['1gpu'], runs['1gpu_seed1'], runs[
            f'{n}gpu']
        out[name] = report.compare_agreement(one, other_seed, many)
        report.say(f'  {name}: ' + out[name]['summary'])
    return out


def check_empty_rank(r: Runner, n: int, timeout: int) -> dict:
    res = r.worker('empty_rank', 'empty-rank', n,
                   ['--config', r.k2, '--steps', '3'], min(timeout, 600))
    if 'error' not in res:
        res['summary'] = (
            f"rank {res['empty_rank']} without boxes: {res['steps']} steps "
            f"done, losses finite on all ranks: {res['finite']}, weights "
            f"equal on all ranks: {res['in_sync']}")
        if not (res['finite'] and res['in_sync']):
            res['error'] = res['summary']
    report.say('  ' + (res.get('error') or res['summary']))
    return res


def shapes_config(work: str, iters: int, shapes: str = SHAPES) -> str:
    """A config training the R18 shapes model for ``iters`` iterations on
    ``WORK/data``, checkpointing every 20, validating at the end."""
    root = osp.join(osp.abspath(work), 'data') + '/'
    path = osp.join(work, f'shapes_{iters}.py')
    with open(path, 'w') as f:
        f.write(f'''# Written by tools/analysis/multi_gpu.py
_base_ = {shapes!r}
train_cfg = dict(
    _delete_=True,
    type='IterBasedTrainLoop',
    max_iters={iters},
    val_interval={iters})
default_hooks = dict(
    checkpoint=dict(by_epoch=False, interval=20, max_keep_ckpts=10),
    logger=dict(interval=10))
log_processor = dict(by_epoch=False)
data_root = {root!r}
train_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
''')
    return path


def make_data(r: Runner) -> None:
    root = osp.join(r.work, 'data')
    if osp.exists(osp.join(root, 'annotations', 'instances_val.json')):
        return
    code = r.run('data', [
        sys.executable, 'tools/generate_shapes_dataset.py', '--out', root,
        '--seed', '0', '--workers', '8', *r.data_args
    ], r.env(), 600)
    if code != 0:
        raise RuntimeError(f'data generation failed: {r.log("data")[-500:]}')


def dist_train(r: Runner, name: str, config: str, n: int, *extra: str,
               work_dir: Optional[str] = None,
               env: Optional[dict] = None) -> subprocess.Popen:
    """``tools/dist_train.sh`` on ``n`` GPUs, log ``WORK/<name>.log``,
    work dir ``WORK/<work_dir or name>``."""
    cmd = ['bash', 'tools/dist_train.sh', config, str(n), '--work-dir',
           osp.join(r.work, work_dir or name), '--skip-data-check', *extra]
    return r.start(name, cmd, env or r.env(r.gpus[:n]))


def check_resume(r: Runner, n: int, timeout: int) -> dict:
    make_data(r)
    config = shapes_config(r.work, 60, r.shapes)
    # Three runs at once on the same GPUs: results do not depend on sharing.
    procs = {name: dist_train(r, name, config, n)
             for name in ('resume_ref', 'resume_ref2', 'resume_killed')}
    start, killed_at = time.time(), None
    while killed_at is None and time.time() - start < timeout:
        time.sleep(2)
        done = [int(i) for i in ITER_RE.findall(r.log('resume_killed'))]
        if done and max(done) >= 50:
            os.killpg(procs['resume_killed'].pid, signal.SIGKILL)
            killed_at = max(done)
        elif procs['resume_killed'].poll() is not None:
            break
    codes = {k: r.wait(p, timeout) for k, p in procs.items()}
    res = dict(killed_after_iter=killed_at, codes=codes)
    if killed_at is None:
        res['error'] = 'the run to kill ended before iteration 50'
        return res
    code = r.wait(dist_train(r, 'resume_resumed', config, n, '--resume',
                             work_dir='resume_killed'), timeout)
    res['resume_code'] = code
    resumed = r.log('resume_resumed')
    match = re.search(r'resumed epoch: \d+, iter: (\d+)', resumed)
    res['resumed_from_iter'] = int(match.group(1)) if match else None
    res['resumed_first_logged_iter'] = min(
        [int(i) for i in ITER_RE.findall(resumed)] or [0])
    ref = osp.join(r.work, 'resume_ref')
    res.update(report.compare_checkpoints(
        osp.join(ref, 'iter_60.pth'), osp.join(ref, 'iter_20.pth'), {
            'second uninterrupted run': osp.join(r.work, 'resume_ref2',
                                                 'iter_60.pth'),
            'killed + resumed run': osp.join(r.work, 'resume_killed',
                                             'iter_60.pth')
        }))
    report.say(f"  killed after iteration {killed_at}, resumed from "
               f"{res['resumed_from_iter']}: {res['summary']}")
    return res


def check_dist_test(r: Runner, n: int, timeout: int) -> dict:
    ckpt = osp.join(r.work, 'resume_ref', 'iter_60.pth')
    if not osp.exists(ckpt):
        return dict(error='needs the resume check\'s checkpoint')
    config = shapes_config(r.work, 60, r.shapes)
    outs = {}
    for name, cmd, gpus in (
            ('test_1gpu', [sys.executable, 'tools/test.py', config, ckpt],
             r.gpus[:1]),
            (f'test_{n}gpu', ['bash', 'tools/dist_test.sh', config, ckpt,
                              str(n)], r.gpus[:n])):
        pkl = osp.join(r.work, f'{name}.pkl')
        code = r.run(name, cmd + ['--out', pkl, '--work-dir',
                                  osp.join(r.work, name)], r.env(gpus),
                     timeout)
        outs[name] = dict(code=code, pkl=pkl, log=r.log(name))
    res = report.compare_tests(outs['test_1gpu'], outs[f'test_{n}gpu'])
    report.say('  ' + res['summary'])
    return res


def check_multinode(r: Runner, n: int, timeout: int) -> dict:
    make_data(r)
    config = shapes_config(r.work, 20, r.shapes)
    per_node = max(n // 2, 1)
    port = r.port + 7
    procs = []
    for node in range(2):
        gpus = r.gpus[node * per_node:(node + 1) * per_node]
        env = r.env(gpus, NNODES=2, NODE_RANK=node, MASTER_ADDR='127.0.0.1',
                    PORT=port)
        procs.append(dist_train(r, f'multinode_node{node}', config,
                                per_node, env=env))
    codes = [r.wait(p, timeout) for p in procs]
    log0 = r.log('multinode_node0')
    world = re.search(r'world_size[\'"]?[:=]\s*(\d+)', log0)
    ckpt = osp.join(r.work, 'multinode_node0', 'iter_20.pth')
    res = dict(codes=codes, gpus_per_node=per_node,
               world_size=int(world.group(1)) if world else None,
               checkpoint=osp.exists(ckpt))
    res['summary'] = (f'2 nodes x {per_node} GPU(s): exit codes {codes}, '
                      f'world size {res["world_size"]}, iter_20 checkpoint '
                      f'written: {res["checkpoint"]}')
    if not (codes == [0, 0] and res['checkpoint']):
        res['error'] = res['summary']
    report.say('  ' + res['summary'])
    return res


def main() -> None:
    args = parse_args()
    import torch
    os.makedirs(args.work, exist_ok=True)
    n = torch.cuda.device_count()
    visible = os.environ.get('CUDA_VISIBLE_DEVICES')
    gpus = visible.split(',')[:n] if visible else [str(i) for i in range(n)]
    if args.cpu_smoke:
        n, gpus = 2, ['', '']  # CUDA_VISIBLE_DEVICES='': CPU processes
    elif n == 0:
        sys.exit('no GPU: these checks are about NCCL (see --cpu-smoke)')
    r = Runner(args.work, gpus)
    if args.cpu_smoke:
        r.k2 = r.k0 = r.shapes = osp.abspath(args.cpu_smoke)
        r.worker_args = ['--size', '96', '128', '--warmup', '1', '--steps',
                         '2']
        r.data_args = ['--num-train', '16', '--num-val', '4', '--min-side',
                       '64', '--max-side', '96', '--min-size', '16']
    results = dict(gpus=n, torch=torch.__version__,
                   device=torch.cuda.get_device_name(0) if gpus[0] else
                   'CPU (smoke test)')
    for name in args.checks:
        if n < 2 and name != 'scaling':
            results[name] = dict(error=f'needs 2 GPUs, {n} visible')
            continue
        report.say(f'{name} ...')
        start = time.time()
        fn = globals()['check_' + name.replace('-', '_')]
        try:
            results[name] = fn(r, n, args.timeout)
        except Exception as exc:  # report it and go on with the others
            results[name] = dict(error=f'{type(exc).__name__}: {exc}')
            report.say(f'  failed: {results[name]["error"]}')
        results[name]['seconds'] = round(time.time() - start)
        with open(osp.join(args.work, 'multi_gpu.json'), 'w') as f:
            json.dump(results, f, indent=1, default=str)
    text = report.markdown(results)
    with open(osp.join(args.work, 'multi_gpu.md'), 'w') as f:
        f.write(text)
    print(text)
    failed: Dict[str, str] = {
        k: v['error'] for k, v in results.items()
        if isinstance(v, dict) and 'error' in v
    }
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main()
