"""The benchmark of ``tools/analysis/benchmark.py``: arms timed side by
side, their table, and optionally per-stage times and profiles.

See :mod:`.bench_arms` for how arms are built and timed, and
:mod:`.step_profile` for the stages and profiles.
"""
import argparse
import json
from typing import List

import torch

from .bench_arms import Arm, build_arms, set_tf32, time_arms
from .mmdet_source import (REFERENCE, cross_ratio, is_source_model,
                           run_source_arms)
from .step_profile import format_profile, profile_step, stage_times
from .synthetic import fake_batch


@torch.no_grad()
def graph_vs_eager(arm: Arm, args: argparse.Namespace) -> str:
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


def print_cross_ratios(rows: List[dict], source_rows: List[dict]) -> None:
    """Every arm of this process against every arm of the source process,
    in the same precision, through the reference arm both timed."""
    everything = rows + source_rows
    for theirs in dict.fromkeys(r['model'] for r in source_rows
                                if r['model'] != REFERENCE):
        for ours in dict.fromkeys(r['model'] for r in rows):
            for precision in ('fp32', 'amp'):
                ratio = cross_ratio(everything, ours, theirs, precision)
                if ratio is not None:
                    print(f'{ours} ({precision}) / {theirs} ({precision}), '
                          f'through {REFERENCE} fp32 of each process: '
                          f'{ratio:.2f}')


def run(args: argparse.Namespace) -> None:
    """Build, warm up and time the arms of ``args.models`` x
    ``args.precisions``; print each row as JSON and the table (and write the
    rows to ``args.out``), then the CUDA-graph check, stage times
    (``args.stages``) and profiles (``args.profile``) of the arms asked for.

    Source arms (:mod:`.mmdet_source`, ``args.mmdet_source``) run first, in
    a child process, with the reference arm; their rows follow this
    process's in the JSON, marked ``process='mmdet-source'``.
    """
    source_rows = []
    if not getattr(args, 'source_process', False):  # not in the child
        source_names = [n for n in args.models if is_source_model(n)]
        if source_names:
            source_rows = run_source_arms(args, source_names)
        args.models = [n for n in args.models if not is_source_model(n)]
    from mmdet.utils import register_all_modules
    from mmengine.logging import MMLogger
    register_all_modules()
    # mmengine logs every parameter's paramwise options at INFO
    MMLogger.get_current_instance().setLevel('WARNING')
    device_name = torch.cuda.get_device_name() if args.device.startswith(
        'cuda') else 'cpu'
    count = getattr(args, 'back_to_back', 1)
    back_to_back = f' (each the mean of {count} back to back)' \
        if count > 1 else ''
    print(f'{device_name}, torch {torch.__version__}, '
          f'train bs{args.batch_size} {args.train_size}, infer bs1 '
          f'{args.infer_size}, median of {args.iters} interleaved steps'
          f'{back_to_back}, optimizer: {args.optimizer}')
    arms = build_arms(args.models, args.precisions, args)
    if not arms:  # e.g. the child process of mmdet's arms, all failing
        raise SystemExit('error: no arm could be built (the reason for each '
                         'is printed above); nothing to time')
    rows = time_arms(arms, args)
    for row in rows:
        print(json.dumps(row), flush=True)
    print_table(rows, args.models[0])
    if source_rows:
        print_cross_ratios(rows, source_rows)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(rows + source_rows, f, indent=1)
    for arm in arms:
        set_tf32(arm.tf32)  # the stages and graph checks call the model
        if getattr(arm.model, 'cuda_graphs', None):
            print(graph_vs_eager(arm, args), flush=True)
    for arm in arms:
        set_tf32(arm.tf32)
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
