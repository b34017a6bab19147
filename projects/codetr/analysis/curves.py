"""Training curves: mmengine's scalar logs, read and plotted.

Reads the scalars mmengine's ``LocalVisBackend`` / ``LoggerHook`` write:
``<work_dir>/<timestamp>/vis_data/scalars.json`` (or the
``<timestamp>.json`` log next to it), one JSON object per line. Training lines
carry ``loss*`` keys, the learning rate and ``step`` = iteration; validation
lines carry ``coco/bbox_mAP*`` and ``step`` = epoch (or iteration for
iteration-based runs).

Given a work dir, every run in it is read in time order, so that a run that
was resumed (a new ``<timestamp>`` folder) continues the curve; where runs
overlap the later one wins.

:func:`plot` draws one run (``tools/analysis/plot_curves.py``),
:func:`plot_runs` overlays several (``tools/analysis/compare_runs.py`` and
the convergence benchmark's summary). matplotlib is imported by these two
only.
"""
import fnmatch
import glob
import json
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

Series = Dict[str, Dict[int, float]]  # key -> {step: value}
Run = Tuple[str, Series, Series]  # label, training and validation series

DEFAULT_LOSS_KEYS = ('loss', 'loss_cls', 'loss_bbox', 'loss_iou')
DEFAULT_METRIC_KEYS = ('coco/bbox_mAP', 'coco/bbox_mAP_50',
                       'coco/bbox_mAP_75')


def find_scalar_files(path: str) -> List[str]:
    """The scalar logs to read for ``path``, oldest run first.

    Args:
        path: A ``scalars.json`` / ``<timestamp>.json`` file, a
            ``<timestamp>`` folder or a work dir holding several.
    """
    if osp.isfile(path):
        return [path]
    files = []
    for run in sorted(glob.glob(osp.join(path, '*', 'vis_data'))
                      + glob.glob(osp.join(path, 'vis_data'))):
        scalars = osp.join(run, 'scalars.json')
        logs = sorted(glob.glob(osp.join(run, '[0-9]*.json')))
        if osp.isfile(scalars):
            files.append(scalars)
        elif logs:
            files.append(logs[-1])
    return files


def read_scalars(files: Sequence[str]) -> Tuple[Series, Series]:
    """Split the logged scalars into training and validation series.

    Returns:
        tuple[Series, Series]: Training scalars by iteration and validation
        scalars by their step (epoch or iteration).
    """
    train: Series = {}
    val: Series = {}
    for path in files:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a killed run
                step = record.pop('step', record.get('iter'))
                if step is None:
                    continue
                # Validation lines are the ones with "<metric>/<name>" keys.
                target = val if any('/' in k for k in record) else train
                for key, value in record.items():
                    if isinstance(value, (int, float)):
                        target.setdefault(key, {})[int(step)] = float(value)
    return train, val


def select_keys(available: Sequence[str], patterns: Sequence[str]
                ) -> List[str]:
    """Keys matching any of ``patterns`` (shell wildcards), in pattern
    order."""
    chosen = []
    for pattern in patterns:
        for key in sorted(available):
            if fnmatch.fnmatchcase(key, pattern) and key not in chosen:
                chosen.append(key)
    return chosen


def smooth(values: Sequence[float], window: int) -> List[float]:
    """Trailing moving average over ``window`` points (1 = unchanged)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot(train: Series, val: Series, loss_keys: Sequence[str],
         metric_keys: Sequence[str], window: int, out: str, title: str,
         log_y: bool = True) -> None:
    """Draw losses (left) and metrics (right) and save the PNG.

    A logarithmic loss axis keeps the components readable next to the
    total, which for Co-DETR is ~30x larger (auxiliary losses weigh x12).
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(13, 4.5))
    if len(loss_keys) > 10:  # beyond the default cycle colours repeat
        ax_loss.set_prop_cycle(color=plt.get_cmap('tab20').colors)
    for key in loss_keys:
        steps = sorted(train[key])
        values = [train[key][s] for s in steps]
        line, = ax_loss.plot(steps, smooth(values, window), label=key,
                             linewidth=1.5 if key == 'loss' else 1.0)
        if window > 1:  # raw values faintly behind the smoothed curve
            ax_loss.plot(steps, values, color=line.get_color(), alpha=0.2,
                         linewidth=0.5)
    if log_y:
        ax_loss.set_yscale('log')
    ax_loss.set_xlabel('iteration')
    ax_loss.set_ylabel('loss' + (f' (moving average of {window})'
                                 if window > 1 else ''))
    ax_loss.set_title('training losses')
    if loss_keys:
        ax_loss.legend(fontsize=8)
    ax_loss.grid(alpha=0.3)

    for key in metric_keys:
        steps = sorted(val[key])
        ax_map.plot(steps, [val[key][s] for s in steps], marker='o',
                    label=key.split('/')[-1])
    ax_map.set_xlabel('epoch (or iteration for iteration-based runs)')
    ax_map.set_ylabel('COCO AP')
    ax_map.set_title('validation' if metric_keys else
                     'validation (no metrics logged yet)')
    if metric_keys:
        ax_map.legend(fontsize=8)
    ax_map.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_runs(runs: Sequence[Run],
              loss_key: str,
              metric: str,
              window: int,
              out: str,
              loss_title: Optional[str] = None,
              metric_title: Optional[str] = None,
              suptitle: Optional[str] = None) -> None:
    """Draw ``loss_key`` (left, log axis, moving average over ``window``
    logged points) and ``metric`` (right) of every run against the
    iteration and save the PNG. A run without the key leaves no line."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, train, val in runs:
        loss = train.get(loss_key, {})
        steps = sorted(loss)
        ax_loss.plot(
            steps,
            smooth([loss[s] for s in steps], window),
            label=label,
            marker='.' if len(steps) < 50 else None)
        values = val.get(metric, {})
        steps = sorted(values)
        ax_map.plot(steps, [values[s] for s in steps], 'o-', label=label)
    ax_loss.set(title=loss_title or loss_key, xlabel='iteration', yscale='log')
    ax_map.set(title=metric_title or metric, xlabel='iteration')
    ax_map.set_ylim(bottom=0)
    for ax in (ax_loss, ax_map):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
