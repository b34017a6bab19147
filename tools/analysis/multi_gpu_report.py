"""Comparisons and tables of ``tools/analysis/multi_gpu.py``."""
import math
import pickle
import re
import sys
import time
from typing import Dict, List, Optional

# A loss is "random" when two 1-GPU runs that differ only in the torch seed
# (which drives the RPN/RoI samplers) disagree by more than this (relative).
SEED_TOLERANCE = 1e-5
METRIC_RE = re.compile(r'coco/(bbox_\w+): (-?[\d.]+)')


def say(text: str) -> None:
    print(f'[{time.strftime("%H:%M:%S")}] {text}', flush=True)


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), 1e-12)


def max_weight_diff(a: str, b: str) -> Optional[float]:
    """Largest absolute difference between two saved state dicts."""
    import torch
    try:
        sa = torch.load(a, map_location='cpu', weights_only=True)
        sb = torch.load(b, map_location='cpu', weights_only=True)
    except (OSError, RuntimeError):
        return None
    sa, sb = sa.get('state_dict', sa), sb.get('state_dict', sb)
    return max((sa[k].double() - sb[k].double()).abs().max().item()
               for k in sa if sa[k].is_floating_point())


def compare_agreement(one: dict, other_seed: dict, many: dict) -> dict:
    """Per loss: 1-GPU value, N-GPU mean over ranks, their relative
    difference, and whether it depends on the seed (random sampling)."""
    for run in (one, other_seed, many):
        if 'error' in run:
            return dict(error=run['error'], summary=run['error'])
    rows, worst, worst_random, spread = [], 0.0, 0.0, 0.0
    for step, (a, s, b) in enumerate(
            zip(one['steps'], other_seed['steps'], many['steps'])):
        for key, value in a['mean'].items():
            if key == 'loss':
                continue
            random = any(
                rel(x['mean'][key], y['mean'][key]) > SEED_TOLERANCE
                for x, y in zip(one['steps'][:step + 1],
                                other_seed['steps'][:step + 1]))
            diff = rel(value, b['mean'][key])
            rows.append(dict(step=step, key=key, one=value,
                             many=b['mean'][key], rel=diff, random=random,
                             seed_rel=rel(value, s['mean'][key])))
            if random:
                worst_random = max(worst_random, diff)
                spread = max(spread, rel(value, s['mean'][key]))
            else:
                worst = max(worst, diff)
    det = sorted({r['key'] for r in rows if not r['random']})
    rnd = sorted({r['key'] for r in rows if r['random']})
    weights = max_weight_diff(one['weights_file'], many['weights_file'])
    summary = (f'{len(det)} seed-independent losses agree within {worst:.1e} '
               f'(relative, all steps where they are seed-independent)')
    if rnd:
        summary += (f'; {len(rnd)} depend on random sampling: 1-GPU vs '
                    f'{many["world"]}-GPU up to {worst_random:.1e}, 1-GPU '
                    f'seed 0 vs 1 up to {spread:.1e}')
    if weights is not None:
        summary += (f'; weights after {len(one["steps"])} steps differ by '
                    f'{weights:.1e} at most (largest update '
                    f'{one["max_weight_update"]:.1e})')
    return dict(rows=rows, deterministic=det, random=rnd, worst=worst,
                worst_random=worst_random, seed_spread=spread,
                weight_diff=weights,
                weight_update=one['max_weight_update'], world=many['world'],
                summary=summary)


def compare_checkpoints(ref: str, early: str,
                        others: Dict[str, str]) -> dict:
    """Max weight difference of each run's final checkpoint to ``ref``;
    ``early`` (an earlier checkpoint of ``ref``) gives the scale."""
    out = dict(movement=max_weight_diff(ref, early), diffs={})
    for name, path in others.items():
        out['diffs'][name] = max_weight_diff(ref, path)
    out['summary'] = ', '.join(
        f'{k}: max |dw| {v:.2e}' if v is not None else f'{k}: missing'
        for k, v in out['diffs'].items())
    if out['movement'] is not None:
        out['summary'] += (f' (weights move by up to {out["movement"]:.2e} '
                           f'between iterations 20 and 60)')
    return out


def _metrics(log: str) -> Dict[str, float]:
    lines = [line for line in log.splitlines() if 'coco/bbox_mAP' in line]
    return {k: float(v) for k, v in METRIC_RE.findall(lines[-1])
            } if lines else {}


def _detections(path: str) -> dict:
    with open(path, 'rb') as f:
        results = pickle.load(f)
    return {r['img_id']: r['pred_instances'] for r in results}


def compare_tests(a: dict, b: dict) -> dict:
    """mAP and detections of a 1-GPU and an N-GPU test of one checkpoint."""
    if a['code'] != 0 or b['code'] != 0:
        err = f'exit codes {a["code"]} (1 GPU), {b["code"]} (N GPUs)'
        return dict(error=err, summary=err)
    ma, mb = _metrics(a['log']), _metrics(b['log'])
    da, db = _detections(a['pkl']), _detections(b['pkl'])
    box = score = 0.0
    labels_equal = da.keys() == db.keys()
    for img in da.keys() & db.keys():
        pa, pb = da[img], db[img]
        if pa['bboxes'].shape != pb['bboxes'].shape:
            labels_equal = False
            continue
        box = max(box, (pa['bboxes'] - pb['bboxes']).abs().max().item()
                  if len(pa['bboxes']) else 0.0)
        score = max(score, (pa['scores'] - pb['scores']).abs().max().item()
                    if len(pa['scores']) else 0.0)
        labels_equal &= bool((pa['labels'] == pb['labels']).all())
    same = ma == mb and bool(ma)
    summary = (f'mAP {ma.get("bbox_mAP")} (1 GPU) vs {mb.get("bbox_mAP")} '
               f'(N GPUs), all {len(ma)} COCO metrics equal: {same}; '
               f'{len(da)} vs {len(db)} images, max box diff {box:.2e} px, '
               f'max score diff {score:.2e}, labels equal: {labels_equal}')
    return dict(metrics_1gpu=ma, metrics_ngpu=mb, same_metrics=same,
                images=[len(da), len(db)], box_diff=box, score_diff=score,
                labels_equal=labels_equal, summary=summary)


def _scaling_table(res: dict) -> List[str]:
    rows = res.get('rows', [])
    base = {r['precision']: r for r in rows
            if r.get('gpus') == 1 and 'error' not in r}
    out = ['| GPUs | precision | images/GPU | step (ms) | images/s | '
           'peak memory/GPU (GiB) | scaling efficiency |',
           '|---|---|---|---|---|---|---|']
    for r in rows:
        if 'error' in r:
            out.append(f'| {r["gpus"]} | {r["precision"]} | failed: '
                       f'{r["error"][:120]} | | | | |')
            continue
        one = base.get(r['precision'])
        eff = (r['img_per_s'] / (r['gpus'] * one['img_per_s'])
               if one else math.nan)
        out.append(f'| {r["gpus"]} | {r["precision"]} | {r["per_gpu"]} | '
                   f'{r["step_ms"]:.0f} | {r["img_per_s"]:.2f} | '
                   f'{max(r["peak_gib"]):.2f} | {eff:.2f} |')
    return out


def _agreement_table(res: dict) -> List[str]:
    out = []
    for name, cmp in res.items():
        if not isinstance(cmp, dict) or 'rows' not in cmp:
            continue
        out += ['', f'{name}: {cmp["summary"]}', '',
                f'| loss (step 1) | 1 GPU | {cmp["world"]} GPUs (mean of '
                f'ranks) | relative diff | depends on seed |',
                '|---|---|---|---|---|']
        for r in cmp['rows']:
            if r['step'] == 0:
                out.append(f'| {r["key"]} | {r["one"]:.6f} | '
                           f'{r["many"]:.6f} | {r["rel"]:.1e} | '
                           f'{"yes" if r["random"] else "no"} |')
    return out


def markdown(results: dict) -> str:
    lines = [f'# Multi-GPU checks: {results["gpus"]}x {results["device"]}, '
             f'torch {results["torch"]}', '']
    for name in ('scaling', 'agreement', 'empty-rank', 'resume', 'dist-test',
                 'multinode'):
        res = results.get(name)
        if res is None:
            continue
        lines.append(f'## {name} ({res.get("seconds", "?")} s)')
        if 'error' in res:
            lines.append(f'FAILED or not run: {res["error"]}')
        elif name == 'scaling':
            lines += _scaling_table(res)
        elif name == 'agreement':
            lines += _agreement_table(res)
        else:
            lines.append(res.get('summary') or ', '.join(
                f'{k}: {v}' for k, v in res.items()
                if k not in ('digests', 'last_losses')))
        lines.append('')
    return '\n'.join(lines)


if __name__ == '__main__':
    sys.exit('used by tools/analysis/multi_gpu.py')
