"""Where the time of a GPU training step goes: host, device, launches.

A training step is bound by the host when the GPU waits for Python to
enqueue work. :func:`profile_step` runs a few steps under
``torch.profiler`` and reports, per step, the wall time, the GPU busy time
(sum of kernel, memcpy and memset durations), the number of kernel
launches and of host waits, and the host's time inside synchronising
calls and copies, in all and per stage of a Co-DETR step. A stage whose
host time far exceeds its GPU time is launch-bound: fewer (larger) ops
help it; one whose GPU time dominates needs faster kernels. Host time
spent waiting is GPU work that the host could have overlapped with
issuing other work: a step whose host time is mostly issuing, not
waiting, is bound by the host.

:func:`stage_times` times the same stages by synchronising around each
(slower, but without the profiler's overhead). Used by
``tools/analysis/benchmark.py --profile MODEL`` and ``--stages``.
"""
import argparse
import bisect
import collections
import time
from typing import Callable, Dict, List, Tuple

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from .bench_arms import sync
from .synthetic import fake_batch

LAUNCHES = ('cudaLaunchKernel', 'cuLaunchKernel', 'cudaLaunchKernelExC',
            'cuLaunchKernelEx')
WAITS = ('cudaStreamSynchronize', 'cudaDeviceSynchronize',
         'cudaEventSynchronize')


def stage_methods(model) -> List[Tuple[object, str]]:
    """(object, method name) of each stage of a CoDETR training step."""
    # mmdet's own CoDETR (projects/CO-DETR) has other stages
    if type(model).__name__ != 'CoDETR' or not hasattr(
            model.query_head, 'prepare_decoding'):
        return [(model, 'extract_feat')]
    # queries of the ground truth (Co-DINO's denoising), before the
    # backbone; encoder and query selection; the decoder pass (main and
    # positive queries together, or one pass each); the one-to-one losses;
    # the positive queries' losses
    targets = [(model.query_head, 'ground_truth_queries'),
               (model, 'extract_feat'),
               (model.query_head, 'prepare_decoding'),
               (model.query_head.transformer, 'forward_decoder'),
               (model.query_head, 'loss_by_outputs'),
               (model.query_head, 'loss_aux_by_feat')]
    if getattr(model, 'rpn_head', None) is not None:
        targets.append((model, 'rpn_loss_and_proposals'))
    for head in list(model.roi_head) + list(model.bbox_head):
        targets.append((head, 'loss_and_pos_coords'))
    return targets


def _labelled(fn: Callable, label: str) -> Callable:

    def wrapper(*args, **kwargs):
        with record_function(label):
            return fn(*args, **kwargs)

    return wrapper


def profile_step(model, step: Callable[[], None], steps: int = 3) -> Dict:
    """Profile ``steps`` calls of ``step`` (a full training step).

    The stages of :func:`stage_methods` are labelled for the profiler by
    instance attributes that shadow the methods (removed afterwards);
    ``step`` should label its backward and optimizer parts with
    ``record_function('backward')`` / ``record_function('optimizer')``.

    Returns:
        dict: per-step ``wall_ms``, ``gpu_ms``, ``launches``, ``waits``
        (stream/device/event synchronisations), ``wait_ms`` (host time
        inside those and inside ``cudaMemcpyAsync``, which blocks for a
        copy to pageable host memory), ``memcpy`` (copy calls),
        ``scalar_reads`` (``.item()``-like reads of CPU tensors
        too, e.g. AdamW's step counters: not all wait for the GPU;
        ``count_host_syncs.py --device cuda`` counts those that do),
        ``stages``: label -> dict of
        ``host_ms`` (wall time of the stage on the host, its kernels
        overlapping), ``wait_ms`` (the part of it in synchronising calls
        and copies) and ``launches``, and ``top_kernels``: the 8 kernels
        of most GPU time, (name, ms per step).
    """
    targets = stage_methods(model)
    for obj, name in targets:
        setattr(obj, name,
                _labelled(getattr(obj, name), f'{type(obj).__name__}.{name}'))
    labels = {f'{type(o).__name__}.{n}'
              for o, n in targets} | {'backward', 'optimizer'}
    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                           if cuda else [])
    try:
        step()  # warm-up outside the profile
        if cuda:
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            with record_function('step'):
                for _ in range(steps):
                    step()
                if cuda:
                    torch.cuda.synchronize()
    finally:
        for obj, name in targets:
            del obj.__dict__[name]
    events = prof.events()
    cpu = torch.autograd.DeviceType.CPU
    # labels appear twice: as host ranges and as GPU-side annotations
    spans = sorted((e.time_range.start, e.time_range.end, e.name)
                   for e in events
                   if e.name in labels and e.device_type == cpu)
    starts = [s[0] for s in spans]
    per_stage = collections.defaultdict(
        lambda: dict(host_ms=0., wait_ms=0., launches=0))
    for start, end, name in spans:
        per_stage[name]['host_ms'] += (end - start) / 1e3 / steps
    counts = collections.Counter()
    # record_function ranges (ours and e.g. 'Optimizer.step#AdamW.step')
    # reappear on the GPU timeline as annotations spanning their kernels:
    # not GPU work of their own
    host_names = {e.name for e in events if e.device_type == cpu}
    gpu_us = 0.
    wall_us = 0.
    kernels = collections.Counter()
    for e in events:
        if e.name == 'step' and e.device_type == cpu:
            wall_us = e.time_range.end - e.time_range.start
        if e.name in labels or e.name == 'step':
            continue
        if e.device_type == torch.autograd.DeviceType.CUDA:
            if e.name in host_names:
                continue
            gpu_us += e.time_range.end - e.time_range.start
            kernels[e.name[:60]] += e.time_range.end - e.time_range.start
            continue
        # the labelled span holding the event (spans do not nest)
        i = bisect.bisect_right(starts, e.time_range.start) - 1
        stage = spans[i][2] if i >= 0 and \
            spans[i][1] >= e.time_range.start else None
        if e.name in LAUNCHES:
            counts['launches'] += 1
            if stage:
                per_stage[stage]['launches'] += 1
        elif e.name in WAITS or e.name == 'cudaMemcpyAsync':
            counts['waits' if e.name in WAITS else 'memcpy'] += 1
            wait_ms = (e.time_range.end - e.time_range.start) / 1e3
            counts['wait_ms'] += wait_ms
            if stage:
                per_stage[stage]['wait_ms'] += wait_ms
        elif e.name == 'aten::_local_scalar_dense':
            counts['scalar_reads'] += 1
    stages = {
        k: dict(host_ms=v['host_ms'],
                wait_ms=v['wait_ms'] / steps,
                launches=v['launches'] / steps)
        for k, v in per_stage.items()
    }
    return dict(
        wall_ms=wall_us / 1e3 / steps,
        gpu_ms=gpu_us / 1e3 / steps,
        launches=counts['launches'] / steps,
        waits=counts['waits'] / steps,
        wait_ms=counts['wait_ms'] / steps,
        memcpy=counts['memcpy'] / steps,
        scalar_reads=counts['scalar_reads'] / steps,
        stages=stages,
        top_kernels=[(k, v / 1e3 / steps) for k, v in kernels.most_common(8)])


def format_profile(name: str, result: Dict) -> str:
    """Human-readable lines of :func:`profile_step`'s result."""
    busy = result['gpu_ms'] / max(result['wall_ms'], 1e-9)
    lines = [
        f"profile of {name}: wall {result['wall_ms']:.1f} ms/step, GPU busy "
        f"{result['gpu_ms']:.1f} ms ({busy:.0%}), "
        f"{result['launches']:.0f} kernel launches, "
        f"{result['waits']:.0f} synchronisations, {result['memcpy']:.0f} "
        f"memcpy calls (host waiting in them {result['wait_ms']:.1f} ms), "
        f"{result['scalar_reads']:.0f} scalar reads (CPU tensors included) "
        'per step'
    ]
    for label, stage in sorted(
            result['stages'].items(), key=lambda kv: -kv[1]['host_ms']):
        lines.append(f"  {label:45s} host {stage['host_ms']:7.1f} ms "
                     f"(waiting {stage['wait_ms']:6.1f})  "
                     f"{stage['launches']:6.0f} launches")
    for kernel, ms in result['top_kernels']:
        lines.append(f'  GPU {ms:6.2f} ms  {kernel}')
    return '\n'.join(lines)


def stage_times(model: torch.nn.Module, args: argparse.Namespace,
                amp: bool) -> Dict[str, float]:
    """Mean synchronised time (ms) of each stage of a CoDETR step.

    Args:
        model (nn.Module): The detector; its stages (:func:`stage_methods`)
            are wrapped by instance attributes, removed afterwards.
        args (argparse.Namespace): ``device``, ``batch_size``,
            ``train_size`` and ``boxes`` of the generated batch.
        amp (bool): Whether the forward runs under autocast.

    Returns:
        dict[str, float]: Milliseconds per step by stage, and ``backward``.
    """
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
