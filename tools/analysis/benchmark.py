"""Train-step time, peak memory and inference speed, models side by side.

In one process on one GPU, for each model and precision: the median time of
a full training step (forward, losses, backward, AdamW step, grad clip) after
warm-up, its peak GPU memory, and inference images/s. Inputs are generated
(random images and boxes), so nothing is downloaded. Ratios are to the first
model (by default mmdet 3.3's own two-stage Deformable DETR with box
refinement). Compare figures of one run only: GPU clocks drift between runs.

Example (one GPU)::

    python tools/analysis/benchmark.py --models mmdet-ddetr k0 k2 \
        --precisions fp32 amp --out work_dirs/benchmark.json
"""
import argparse
import ast
import json
import os.path as osp
import statistics
import sys
import time

import torch
from mmengine.config import Config

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from _plugin import REPO_ROOT, import_plugin  # noqa: E402
from step_profile import (format_profile, profile_step,  # noqa: E402
                          stage_methods)

MMDET_DDETR = 'deformable_detr/' \
    'deformable-detr-refine-twostage_r50_16xb2-50e_coco.py'
MODELS = {
    'mmdet-ddetr': MMDET_DDETR,
    'k0': 'configs/co_deformable_detr_r50_1x_coco_k0.py',
    'k1-atss': 'configs/co_deformable_detr_r50_1x_coco_atss.py',
    'k1-rcnn': 'configs/co_deformable_detr_r50_1x_coco_rcnn.py',
    'k2': 'configs/co_deformable_detr_r50_1x_coco.py',
    'k3': 'configs/co_deformable_detr_r50_1x_coco_k3_fcos.py',
}


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
    parser.add_argument('--out', default=None, help='write results as JSON')
    return parser.parse_args()


def config_path(name: str) -> str:
    if name in MODELS and MODELS[name] == MMDET_DDETR:
        import mmdet
        return osp.join(
            osp.dirname(mmdet.__file__), '.mim', 'configs', MMDET_DDETR)
    return osp.join(REPO_ROOT, MODELS.get(name, name))


def sync(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def build(name: str, num_cp, device: str):
    """Build ``name``; ``NAME@key=value[,key=value]`` overrides
    ``model.key`` (values parsed as Python literals), e.g.
    ``k2@query_head.batched_matching=False``."""
    from mmdet.registry import MODELS as REGISTRY
    name, _, overrides = name.partition('@')
    cfg = Config.fromfile(config_path(name))
    options = {}
    for item in filter(None, overrides.split(',')):
        key, _, value = item.partition('=')
        options[f'model.{key}'] = ast.literal_eval(value)
    cfg.merge_from_dict(options)
    cfg.model.backbone.init_cfg = None  # offline: no pretrained download
    if num_cp is not None and cfg.model.type == 'CoDETR':
        cfg.model.query_head.transformer.encoder.num_cp = num_cp
    torch.manual_seed(0)
    model = REGISTRY.build(cfg.model).to(device)
    model.init_weights()
    return model


def fake_batch(model, batch_size, size, num_boxes, training, seed=0):
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    num_classes = getattr(model, 'num_classes', None) or \
        model.bbox_head.num_classes
    inputs, samples = [], []
    for _ in range(batch_size):
        inputs.append(
            torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8))
        xy = torch.rand(
            num_boxes, 2, generator=gen) * torch.tensor([w, h]) * 0.7
        wh = (torch.rand(num_boxes, 2, generator=gen) * 0.25 + 0.03) * \
            torch.tensor([w, h])
        sample = DetDataSample(
            metainfo=dict(
                img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0)))
        sample.gt_instances = InstanceData(
            bboxes=torch.cat([xy, xy + wh], 1),
            labels=torch.randint(0, num_classes, (num_boxes, ), generator=gen))
        samples.append(sample)
    data = model.data_preprocessor(
        dict(inputs=inputs, data_samples=samples), training=training)
    return data['inputs'], data['data_samples']


def autocast(device: str, enabled: bool):
    dtype = torch.float16 if device.startswith('cuda') else torch.bfloat16
    return torch.autocast(device.split(':')[0], dtype=dtype, enabled=enabled)


def make_train_step(model, args, amp: bool):
    """A closure running one full training step on one generated batch.

    Forward, losses, backward (labelled ``backward`` for the profiler),
    grad clip and AdamW step (``optimizer``); returns the summed loss.
    """
    from torch.profiler import record_function
    model.train()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    device = args.device
    scaler = torch.amp.GradScaler(
        'cuda', enabled=amp and device.startswith('cuda'))
    inputs, samples = fake_batch(model, args.batch_size, args.train_size,
                                 args.boxes, True)

    def step() -> torch.Tensor:
        with autocast(device, amp):
            losses = model.loss(inputs, samples)
            loss, _ = model.parse_losses(losses)
        optim.zero_grad(set_to_none=True)
        with record_function('backward'):
            scaler.scale(loss).backward()
        with record_function('optimizer'):
            scaler.unscale_(optim)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            scaler.step(optim)
            scaler.update()
        return loss

    return step


def time_train(model, args, amp: bool) -> dict:
    device = args.device
    step = make_train_step(model, args, amp)
    times = []
    if device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
    for i in range(args.warmup + args.iters):
        sync(device)
        start = time.perf_counter()
        loss = step()
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
        if not torch.isfinite(loss):
            raise FloatingPointError(f'non-finite loss at step {i}')
    return dict(
        step_ms=1000 * statistics.median(times),
        peak_gib=torch.cuda.max_memory_allocated() /
        2**30 if device.startswith('cuda') else 0.0,
        loss=loss.item())


@torch.no_grad()
def time_infer(model, args, fp16: bool) -> dict:
    model.eval()
    inputs, samples = fake_batch(model, 1, args.infer_size, args.boxes, False)
    times = []
    for step in range(args.warmup + args.infer_iters):
        sync(args.device)
        start = time.perf_counter()
        with autocast(args.device, fp16):
            model.predict(inputs, samples)
        sync(args.device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    return dict(img_per_s=1 / statistics.median(times))


def stage_times(model, args, amp: bool) -> dict:
    """Mean synchronised time (ms) of each stage of a CoDETR step."""
    from collections import defaultdict
    totals = defaultdict(float)
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
        with autocast(args.device, amp):
            loss, _ = model.parse_losses(model.loss(inputs, samples))
        sync(args.device)
        start = time.perf_counter()
        loss.backward()
        sync(args.device)
        totals['backward'] += time.perf_counter() - start
    for obj, name in targets:
        del obj.__dict__[name]
    return {k: 1000 * v / steps for k, v in totals.items()}


def print_table(rows: list, base_model: str) -> None:
    """Markdown table; ratios are to ``base_model`` in fp32."""
    base = next((r for r in rows if r['model'] == base_model
                 and r['precision'] == 'fp32' and 'error' not in r), None)
    print(f'\n| model | precision | params (M) | train step (ms) | '
          f'x {base_model} fp32 | peak mem (GiB) | x | infer (img/s) | x |')
    print('|---|---|---|---|---|---|---|---|---|')
    for r in rows:
        if 'error' in r:
            print(f"| {r['model']} | {r['precision']} | failed: "
                  f"{r['error']} | | | | | | |")
            continue

        def x(key: str) -> str:
            return f'{r[key] / base[key]:.2f}' if base and base[key] else '-'

        print(f"| {r['model']} | {r['precision']} | {r['params_m']:.1f} | "
              f"{r['step_ms']:.0f} | {x('step_ms')} | {r['peak_gib']:.2f} | "
              f"{x('peak_gib')} | {r['img_per_s']:.1f} | {x('img_per_s')} |")


def main() -> None:
    args = parse_args()
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        sys.exit('no CUDA device: pass --device cpu for a smoke test')
    import_plugin()
    from mmdet.utils import register_all_modules
    register_all_modules()
    device_name = torch.cuda.get_device_name() if args.device.startswith(
        'cuda') else 'cpu'
    print(f'{device_name}, torch {torch.__version__}, '
          f'train bs{args.batch_size} {args.train_size}, infer bs1 '
          f'{args.infer_size}, median of {args.iters} steps')
    rows = []
    for name in args.models:
        model = build(name, args.num_cp, args.device)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        for precision in args.precisions:
            amp = precision == 'amp'
            row = dict(model=name, precision=precision, params_m=params)
            try:
                row.update(time_train(model, args, amp))
                row.update(time_infer(model, args, amp))
            except Exception as exc:  # report and go on with the others
                row['error'] = f'{type(exc).__name__}: {exc}'[:200]
            rows.append(row)
            print(json.dumps(row), flush=True)
        if args.stages and model.__class__.__name__ == 'CoDETR':
            for precision in args.precisions:
                stages = stage_times(model, args, precision == 'amp')
                print(
                    f'stages of {name} ({precision}), ms: ' +
                    ', '.join(f'{k} {v:.1f}' for k, v in stages.items()),
                    flush=True)
        if name in args.profile:
            for precision in args.precisions:
                step = make_train_step(model, args, precision == 'amp')
                print(format_profile(f'{name} ({precision})',
                                     profile_step(model, step)), flush=True)
        del model
        if args.device.startswith('cuda'):
            torch.cuda.empty_cache()

    print_table(rows, args.models[0])
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(rows, f, indent=1)


if __name__ == '__main__':
    main()
