"""Train-step time, peak memory and inference speed, models side by side.

In one process on one GPU, for each model and precision (an *arm*, see
``bench_arms.py``): the median time of a full training step (forward,
losses, backward, grad clip, optimizer step, with the config's optimizer
wrapper as ``tools/train.py`` builds it) and inference images/s at batch 1,
the arms' steps interleaved round-robin; and each arm's peak GPU memory.
Inputs are generated (random images and boxes), so nothing is downloaded.
Ratios are to the first model's fp32 arm (by default mmdet 3.3's own
two-stage Deformable DETR with box refinement) and, for AMP, to the same
model's fp32 arm.

Example (one GPU)::

    python tools/analysis/benchmark.py --models mmdet-ddetr k0 k2 \
        --precisions fp32 amp --stages --profile k2 --out bench.json
"""
import argparse
import json
import os.path as osp
import sys
import time

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _plugin import import_plugin  # noqa: E402
from bench_arms import time_arms  # noqa: E402
from bench_arms import MODELS, build_arms, fake_batch, sync  # noqa: E402
from step_profile import (format_profile, profile_step,  # noqa: E402
                          stage_methods)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--models',
        nargs='+',
        default=['mmdet-ddetr', 'k0', 'k2'],
        help=f'names of {sorted(MODELS)} or config paths, each optionally '
        'with @key=value,... overriding model.key')
    parser.add_argument(
        '--precisions',
        nargs='+',
        default=['fp32', 'amp'],
        choices=['fp32', 'amp'])
    parser.add_argument(
        '--train-size',
        type=int,
        nargs=2,
        default=[800, 1216],
        metavar=('H', 'W'))
    parser.add_argument(
        '--infer-size',
        type=int,
        nargs=2,
        default=[800, 1333],
        metavar=('H', 'W'))
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument(
        '--boxes',
        type=int,
        default=10,
        help='random ground-truth boxes per image')
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--iters', type=int, default=20)
    parser.add_argument('--infer-iters', type=int, default=30)
    parser.add_argument(
        '--num-cp',
        type=int,
        default=None,
        help='checkpoint this many encoder layers (ours)')
    parser.add_argument(
        '--profile',
        nargs='*',
        default=[],
        help='model names: print where their training steps spend host '
        'and GPU time (kernel launches, synchronisations, per stage)')
    parser.add_argument(
        '--stages',
        action='store_true',
        help='also time the stages of a CoDETR training '
        'step (synchronising around each: slower overall)')
    parser.add_argument(
        '--device',
        default='cuda',
        help="'cpu' runs a smoke test (no memory figures)")
    parser.add_argument(
        '--optimizer',
        default='config',
        choices=['config', 'plain'],
        help="'config': each config's optim_wrapper (paramwise learning "
        "rates, grad clip); 'plain': one AdamW group for every model")
    parser.add_argument('--out', default=None, help='write results as JSON')
    args = parser.parse_args()
    if not args.device.startswith('cuda') and 'amp' in args.precisions:
        parser.error("AMP needs CUDA (mmengine's AmpOptimWrapper): pass "
                     '--precisions fp32 with --device cpu')
    return args


def stage_times(model, args, amp: bool) -> dict:
    """Mean synchronised time (ms) of each stage of a CoDETR step."""
    from collections import defaultdict
    totals = defaultdict(float)
    cuda = args.device.startswith('cuda')
    targets = stage_methods(model)

    def timed(obj, name, label):
        fn = getattr(obj, name)

        def wrapper(*a, **kw):
            sync(args.device)
            start = time.perf_counter()
            out = fn(*a, **kw)
            sync(args.device)
            totals[label] += time.perf_counter() - start
            return out

        setattr(obj, name, wrapper)  # instance attribute shadows the method

    for obj, name in targets:
        timed(obj, name, f'{type(obj).__name__}.{name}')
    model.train()
    inputs, samples = fake_batch(model, args.batch_size, args.train_size,
                                 args.boxes, True)
    steps = 5
    for step in range(steps + 2):
        if step == 2:
            totals.clear()
        with torch.autocast(
                args.device.split(':')[0],
                dtype=torch.float16 if cuda else torch.bfloat16,
                enabled=amp):
            loss, _ = model.parse_losses(model.loss(inputs, samples))
        sync(args.device)
        start = time.perf_counter()
        loss.backward()
        sync(args.device)
        totals['backward'] += time.perf_counter() - start
    for obj, name in targets:
        del obj.__dict__[name]
    return {k: 1000 * v / steps for k, v in totals.items()}


@torch.no_grad()
def graph_vs_eager(arm, args) -> str:
    """How far the replayed predictions of a graphed arm are from eager
    ones, on an input of the captured shape that the capture did not see
    (the timing used seed 0)."""
    model = arm.model.eval()
    inputs, samples = fake_batch(
        model, 1, args.infer_size, args.boxes, False, seed=1)
    with torch.autocast('cuda', dtype=torch.float16, enabled=arm.amp):
        graphed = model._detr_predictions(inputs, samples)
        eager = model.detr_predictions(inputs, samples)
    model.train()
    diffs = [(g.float() - e.float()).abs().max().item()
             for g, e in zip(graphed, eager)]
    return (f'{arm.name} ({arm.precision}): {len(model.cuda_graphs)} '
            f'graph(s); replayed vs eager max |diff|: logits {diffs[0]:.2e}'
            f', boxes {diffs[1]:.2e}')


def print_table(rows: list, base_model: str) -> None:
    """Markdown table; ratios are to ``base_model`` in fp32 and, in the
    last column, to the same model's fp32 arm."""

    def fp32_of(model):
        return next((r for r in rows
                     if r['model'] == model and r['precision'] == 'fp32'),
                    None)

    base = fp32_of(base_model)
    print(f'\n| model | precision | params (M) | train step (ms) | '
          f'x {base_model} fp32 | peak mem (GiB) | x | infer (img/s) | x '
          '| step x own fp32 |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for r in rows:

        def x(key: str, ref=base) -> str:
            return f'{r[key] / ref[key]:.2f}' if ref and ref[key] else '-'

        own = fp32_of(r['model'])
        infer = 'failed' if 'error' in r else f"{r['img_per_s']:.1f}"
        print(f"| {r['model']} | {r['precision']} | {r['params_m']:.1f} | "
              f"{r['step_ms']:.0f} | {x('step_ms')} | {r['peak_gib']:.2f} | "
              f"{x('peak_gib')} | {infer} | {x('img_per_s')} | "
              f"{x('step_ms', own)} |")


def main() -> None:
    args = parse_args()
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        sys.exit('no CUDA device: pass --device cpu for a smoke test')
    import_plugin()
    from mmdet.utils import register_all_modules
    from mmengine.logging import MMLogger
    register_all_modules()
    # mmengine logs every parameter's paramwise options at INFO
    MMLogger.get_current_instance().setLevel('WARNING')
    device_name = torch.cuda.get_device_name() if args.device.startswith(
        'cuda') else 'cpu'
    print(f'{device_name}, torch {torch.__version__}, '
          f'train bs{args.batch_size} {args.train_size}, infer bs1 '
          f'{args.infer_size}, median of {args.iters} interleaved steps, '
          f'optimizer: {args.optimizer}')
    arms = build_arms(args.models, args.precisions, args)
    rows = time_arms(arms, args)
    for row in rows:
        print(json.dumps(row), flush=True)
    print_table(rows, args.models[0])
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(rows, f, indent=1)
    for arm in arms:
        if getattr(arm.model, 'cuda_graphs', None):
            print(graph_vs_eager(arm, args), flush=True)
    for arm in arms:
        if args.stages and type(arm.model).__name__ == 'CoDETR':
            stages = stage_times(arm.model, args, arm.amp)
            print(
                f'stages of {arm.name} ({arm.precision}), ms: ' +
                ', '.join(f'{k} {v:.1f}' for k, v in stages.items()),
                flush=True)
        if arm.name in args.profile:
            print(format_profile(f'{arm.name} ({arm.precision})',
                                 profile_step(arm.model, arm.step)),
                  flush=True)
            arm.model.eval()
            print(format_profile(f'{arm.name} inference ({arm.precision})',
                                 profile_step(arm.model,
                                              arm.make_predict(args))),
                  flush=True)
            arm.model.train()


if __name__ == '__main__':
    main()
