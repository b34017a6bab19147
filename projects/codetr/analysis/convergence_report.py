"""Summary of the convergence benchmark, from the arms' logs.

Reads ``WORK/status.json`` (written by the driver, :mod:`.convergence`) and
each arm's ``scalars.json``, and writes:

* ``WORK/progress.txt``: per arm its state, device, last logged iteration,
  latest mAP and a rough ETA (``cat`` it to follow a detached run);
* ``WORK/convergence.md`` / ``.json``: mAP, mAP50 and mAP75 per validation
  iteration (rows) and arm (columns), and each arm's state; an arm that
  failed or misses an evaluation is named there;
* ``WORK/convergence.png``: every arm's mAP curve (right) and smoothed total
  training loss (left; it includes the auxiliary losses, so its level differs
  between arms by construction).

The driver calls :func:`summarize` while the runs go and at the end;
``tools/analysis/convergence.py WORK --summarize-only`` calls it on the logs
as they are.
"""
import datetime
import json
import os
import os.path as osp
from typing import Dict, Optional

from .convergence_arms import ARMS, SEED, expected_val_iters, lr_step_at
from .curves import find_scalar_files, plot_runs, read_scalars

METRICS = {  # name in the results -> key logged by CocoMetric
    'mAP': 'coco/bbox_mAP',
    'mAP50': 'coco/bbox_mAP_50',
    'mAP75': 'coco/bbox_mAP_75',
}
TITLES = dict(mAP='box mAP@[.5:.95]', mAP50='box mAP@.5', mAP75='box mAP@.75')


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


def model_family(arms) -> str:
    """The detector the arms train, for titles: Co-DINO for the ``dino_*``
    arms, (Co-)DAB-Deformable-DETR for the ``dab_*`` arms,
    Co-Deformable-DETR for the others, Co-DETR for a mix."""
    families = {
        'Co-DINO' if arm.startswith('dino_') else
        '(Co-)DAB-Deformable-DETR' if arm.startswith('dab_') else
        'Co-Deformable-DETR'
        for arm in arms
    }
    return families.pop() if len(families) == 1 else 'Co-DETR'


def write_atomic(path: str, text: str) -> None:
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
    write_atomic(
        osp.join(work, 'progress.txt'), progress_text(status, results))
    if not plot:
        return False
    md = markdown(status, results)
    write_atomic(osp.join(work, 'convergence.md'), md)
    public = {}  # results without the logged series
    runs = []  # label, training and validation series
    for arm, r in results.items():
        public[arm] = {k: v for k, v in r.items() if not k.startswith('_')}
        label = r['label']
        if r['state'] not in ('done', 'running'):
            label += f" ({r['state'].split(' ')[0]})"  # e.g. '(failed)'
        runs.append((label, r['_train'], r['_val']))
    text = json.dumps(dict(settings=status['settings'], arms=public), indent=1)
    write_atomic(osp.join(work, 'convergence.json'), text + '\n')
    plot_runs(
        runs,
        'loss',
        METRICS['mAP'],
        window=5,
        out=osp.join(work, 'convergence.png'),
        loss_title='total training loss (auxiliary losses included)',
        metric_title='COCO box mAP on val',
        suptitle=f"{model_family(list(results))} R18 from scratch, shapes "
        f"data, {status['settings']['iters']} iterations")
    print(md)
    print(f'wrote {work}/convergence.md, convergence.json, convergence.png')
    return all(r['state'] == 'done' for r in results.values())
