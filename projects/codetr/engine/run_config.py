"""Config edits behind the options of ``tools/train.py`` and ``tools/test.py``.

Each function applies one command-line option to an mmengine ``Config`` in
place and raises :class:`RunConfigError` with the fix when the option cannot
be applied, so that the tools stop before any model or dataset is built.
:func:`add_missing_safeguards` is the one edit without an option: what
``tools/train.py`` adds to a config that does not declare it.
"""
import glob
import os
import os.path as osp
from typing import Callable, List, Optional

import torch

from .buffered_grad_norm import amp_wrapper_type

RESUME_LATEST = 'auto'


class RunConfigError(ValueError):
    """A command-line option does not fit the config or the machine."""


def set_work_dir(cfg, work_dir: Optional[str], config_path: str) -> None:
    """``--work-dir``, else the config's ``work_dir``, else
    ``./work_dirs/<config name>``."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(config_path))[0])


def enable_amp(cfg) -> None:
    """``--amp``: mixed precision through mmengine's ``AmpOptimWrapper``
    (or its buffered-norm subclass, for the configs' buffered wrapper)."""
    if not torch.cuda.is_available():
        raise RunConfigError('--amp needs a CUDA device; none is available. '
                             'Run without --amp.')
    wrapper = cfg.optim_wrapper
    try:
        wrapper.type = amp_wrapper_type(wrapper.get('type', 'OptimWrapper'))
    except ValueError as err:
        raise RunConfigError(f'--amp: {err}') from None
    wrapper.setdefault('loss_scale', 'dynamic')


def enable_auto_scale_lr(cfg) -> None:
    """``--auto-scale-lr``: scale the learning rate by the actual batch size
    over ``auto_scale_lr.base_batch_size``."""
    scale = cfg.get('auto_scale_lr')
    if not scale or 'base_batch_size' not in scale:
        raise RunConfigError(
            '--auto-scale-lr needs `auto_scale_lr = dict(enable=False, '
            'base_batch_size=16)` in the config: base_batch_size is the total '
            'batch size (GPUs x samples per GPU) the learning rate was set '
            'for.')
    scale.enable = True


def find_resume_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint to continue from in ``work_dir``, or ``None``.

    Uses the ``last_checkpoint`` file mmengine's ``CheckpointHook`` writes
    after each complete save (so a run killed while saving falls back to the
    previous file). If that names a path that no longer exists (e.g. the work
    dir was moved), the file of the same name in ``work_dir`` is used, and
    without ``last_checkpoint`` the newest ``*.pth``.
    """
    marker = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(marker):
        with open(marker) as f:
            named = f.read().strip()
        for path in (named, osp.join(work_dir, osp.basename(named))):
            if path and osp.isfile(path):
                return path
    candidates = glob.glob(osp.join(work_dir, '*.pth'))
    return max(candidates, key=osp.getmtime) if candidates else None


def set_resume(cfg, resume: Optional[str],
               log: Callable[[str], None] = print) -> Optional[str]:
    """``--resume [CHECKPOINT]``: continue a run, restoring the model, the
    optimizer, the schedulers, the iteration counters and the random states.

    Args:
        cfg: The full config (``work_dir`` already set).
        resume: ``None`` (no resume), ``'auto'`` (latest checkpoint in the
            work dir; start from scratch if there is none) or a path.
        log: Receives a line saying where training continues from.

    Returns:
        str | None: The checkpoint resumed from.
    """
    if resume is None:
        return None
    if resume == RESUME_LATEST:
        path = find_resume_checkpoint(cfg.work_dir)
        if path is None:
            log(f'--resume: no checkpoint in {cfg.work_dir} yet, training '
                'starts from the beginning.')
            cfg.resume = False
            return None
    else:
        path = resume
        if not osp.isfile(path) and '://' not in path:
            raise RunConfigError(
                f'--resume: checkpoint not found: {path}. Give an existing '
                f'.pth file, or `--resume` alone to continue from the latest '
                f'checkpoint in the work dir.')
    log(f'Resuming from {path}')
    cfg.resume = True
    cfg.load_from = path
    return path


def add_custom_hook(cfg, hook_type: str) -> bool:
    """Append ``dict(type=hook_type)`` to ``custom_hooks`` unless present;
    returns whether it was added."""
    hooks: List = list(cfg.get('custom_hooks') or [])
    added = not any(h.get('type') == hook_type for h in hooks)
    if added:
        hooks.append(dict(type=hook_type))
    cfg.custom_hooks = hooks
    return added


def add_missing_safeguards(cfg, log: Callable[[str], None] = print) -> None:
    """Training safeguards for a config written without them.

    The configs under ``configs/`` declare ``RNGStateHook`` and
    ``LoadFromShapesHook`` in ``custom_hooks`` (``_base_/default_runtime.py``:
    ``--resume`` restores the random states; ``load_from`` names the tensors
    it leaves initialised) and ``RobustLoadImageFromFile`` in their training
    and validation pipelines (``_base_/coco_detection.py``: an unreadable
    image is skipped in training and named in validation); for them this
    does nothing. A config of one's own that lacks them (or sets
    ``tf32=True`` without ``MatmulTF32Hook``) (say, an mmdet
    config, or ``custom_hooks`` set without the hooks) gets them added, each
    addition with a line in ``log`` that names the declaration to copy.
    """
    from ..datasets.robust_loading import use_robust_image_loading
    if add_custom_hook(cfg, 'RNGStateHook'):
        log('The config has no RNGStateHook in custom_hooks: added, so that '
            '--resume restores the random number generator states (declare '
            "custom_hooks = [dict(type='RNGStateHook')] as "
            'configs/_base_/default_runtime.py does).')
    if cfg.get('load_from') and add_custom_hook(cfg, 'LoadFromShapesHook'):
        log('The config has no LoadFromShapesHook in custom_hooks: added, so '
            'that the log names the tensors load_from leaves initialised '
            "(declare dict(type='LoadFromShapesHook') in custom_hooks as "
            'configs/_base_/default_runtime.py does).')
    if cfg.get('tf32') and add_custom_hook(cfg, 'MatmulTF32Hook'):
        log('The config sets tf32=True but has no MatmulTF32Hook in '
            'custom_hooks: added, so that float32 matrix products run in '
            "TF32 (declare dict(type='MatmulTF32Hook') in custom_hooks as "
            'configs/_base_/default_runtime.py does).')
    loaders = ('train_dataloader', 'val_dataloader')
    swapped = use_robust_image_loading(cfg, loaders)
    if swapped:
        log(f'{swapped} LoadImageFromFile step(s) of {" and ".join(loaders)} '
            'switched to RobustLoadImageFromFile: training skips an '
            'unreadable image with a warning, validation stops naming it '
            '(declare it in the pipelines as configs/_base_/coco_detection.py '
            'does).')


def _coco_metrics(cfg, key: str) -> List:
    evaluators = cfg.get(key)
    if evaluators is None:
        return []
    if isinstance(evaluators, dict):
        evaluators = [evaluators]
    return [m for m in evaluators
            if str(m.get('type', '')).split('.')[-1] == 'CocoMetric']


def set_classwise(cfg, key: str) -> None:
    """Per-class AP table from every ``CocoMetric`` of evaluator ``key``."""
    metrics = _coco_metrics(cfg, key)
    if not metrics:
        raise RunConfigError(f'--classwise needs a CocoMetric in {key}.')
    for metric in metrics:
        metric.classwise = True


def set_format_only(cfg, key: str, outfile_prefix: str,
                    format_only: bool) -> None:
    """Write detections as COCO JSON (``<prefix>.bbox.json``).

    Args:
        cfg: The full config.
        key: Evaluator key, e.g. ``'test_evaluator'``.
        outfile_prefix: Path prefix of the JSON files.
        format_only: Skip evaluation (test-dev has no public ground truth).
    """
    metrics = _coco_metrics(cfg, key)
    if not metrics:
        raise RunConfigError(f'--json-prefix needs a CocoMetric in {key}.')
    out_dir = osp.dirname(osp.abspath(outfile_prefix))
    os.makedirs(out_dir, exist_ok=True)
    for metric in metrics:
        metric.outfile_prefix = outfile_prefix
        metric.format_only = format_only
