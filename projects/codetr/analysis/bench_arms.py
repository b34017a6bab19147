"""Benchmark arms: models built side by side and timed in alternation.

One arm is one model in one precision with its own copy of the weights and
its own optimizer wrapper, built from the model's config exactly as
``tools/train.py`` builds it (paramwise learning rates, grad clip,
``AmpOptimWrapper`` for AMP). All arms stay resident on the GPU and their
steps are timed round-robin, the order rotating each round, so clock drift
and thermal state fall on every arm alike instead of on whichever ran
last: on a shared H200 sequential arms of one run differed by ~20%.

Peak memory is measured while an arm is built and warmed up, as the peak
of allocated memory above what was allocated before the arm existed (the
arms built earlier hold only their weights, gradients and optimizer
state then, which do not change): the figure a process running that arm
alone would report.
"""
import ast
import copy
import os.path as osp
import statistics
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
from mmengine.config import Config

from . import REPO_ROOT
from .mmdet_source import SOURCE_MODELS, source_config
from .synthetic import fake_batch

MMDET_DDETR = 'deformable_detr/' \
    'deformable-detr-refine-twostage_r50_16xb2-50e_coco.py'
MODELS = {
    'mmdet-ddetr': MMDET_DDETR,
    'k0': 'configs/co_deformable_detr_r50_1x_coco_k0.py',
    'k1-atss': 'configs/co_deformable_detr_r50_1x_coco_atss.py',
    'k1-rcnn': 'configs/co_deformable_detr_r50_1x_coco_rcnn.py',
    'k2': 'configs/co_deformable_detr_r50_1x_coco.py',
    'k3': 'configs/co_deformable_detr_r50_1x_coco_k3_fcos.py',
    'codino-k0': 'configs/co_dino_5scale_r50_1x_coco_k0.py',
    'codino': 'configs/co_dino_5scale_r50_1x_coco.py',
}
PLAIN_OPTIM = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=1e-4),
    clip_grad=dict(max_norm=0.1, norm_type=2))


def config_path(name: str, mmdet_source: Optional[str] = None) -> str:
    """The config file of a name of :data:`MODELS` or of
    :data:`.mmdet_source.SOURCE_MODELS` (inside ``mmdet_source``), else of
    ``name`` itself (a path relative to the repository or absolute)."""
    if name in SOURCE_MODELS:
        return source_config(name, mmdet_source)
    if name in MODELS and MODELS[name] == MMDET_DDETR:
        import mmdet
        return osp.join(
            osp.dirname(mmdet.__file__), '.mim', 'configs', MMDET_DDETR)
    return osp.join(REPO_ROOT, MODELS.get(name, name))


def sync(device: str) -> None:
    """Wait for the GPU's queued work, so that host timers measure it."""
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def split_overrides(name: str) -> Tuple[str, Dict[str, object]]:
    """``NAME@key=value[,key=value]`` -> (``NAME``, {key: value}), values
    parsed as Python literals."""
    name, _, overrides = name.partition('@')
    options = {}
    for item in filter(None, overrides.split(',')):
        key, _, value = item.partition('=')
        options[key] = ast.literal_eval(value)
    return name, options


def arm_tf32(name: str, mmdet_source: Optional[str] = None) -> bool:
    """Whether the arm ``name`` runs its float32 matrix products in TF32:
    its ``@tf32=True`` override, else its config's ``tf32`` key (see
    ``projects/codetr/engine/tf32_hook.py``)."""
    _, options = split_overrides(name)
    if 'tf32' in options:
        return bool(options['tf32'])
    return bool(load_config(name, mmdet_source=mmdet_source).get('tf32'))


def load_config(name: str,
                num_cp: Optional[int] = None,
                mmdet_source: Optional[str] = None) -> Config:
    """The config of ``name``: ``NAME@key=value[,key=value]`` overrides
    ``model.key`` (values parsed as Python literals), or ``key`` itself
    when it starts with ``optim_wrapper.``; e.g.
    ``k2@query_head.batched_matching=False`` or
    ``"k2@optim_wrapper.constructor='DefaultOptimWrapperConstructor'"``.
    ``tf32=True`` is no config key: it is the arm's (:func:`arm_tf32`)."""
    name, overrides = split_overrides(name)
    cfg = Config.fromfile(
        config_path(name, mmdet_source), format_python_code=False)
    options = {}
    for key, value in overrides.items():
        if key == 'tf32':
            continue
        if not key.startswith('optim_wrapper.'):
            key = f'model.{key}'
        options[key] = value
    cfg.merge_from_dict(options)
    cfg.model.backbone.init_cfg = None  # offline: no pretrained download
    if num_cp is not None and cfg.model.type == 'CoDETR' and \
            name not in SOURCE_MODELS:
        cfg.model.query_head.transformer.encoder.num_cp = num_cp
    return cfg


def build(name: str,
          num_cp: Optional[int],
          device: str,
          mmdet_source: Optional[str] = None) -> torch.nn.Module:
    """The model of ``name`` (see :func:`load_config`), seeded weights."""
    from mmdet.registry import MODELS as REGISTRY
    cfg = load_config(name, num_cp, mmdet_source)
    torch.manual_seed(0)
    model = REGISTRY.build(cfg.model).to(device)
    model.init_weights()
    return model


def build_optim_wrapper(model,
                        cfg: Config,
                        amp: bool,
                        optimizer: str,
                        plugin: bool = True):
    """The optimizer wrapper ``tools/train.py`` would build.

    Args:
        optimizer (str): ``'config'``: the config's ``optim_wrapper``
            (its constructor, paramwise options and grad clip); ``'plain'``:
            one AdamW group, lr 1e-4, grad clip 0.1.
        plugin (bool): Whether this process may import the plugin. The
            child process of mmdet's own arms (:mod:`.mmdet_source`) must
            not: importing ``projects.codetr`` registers the plugin's
            modules under the names mmdet's Co-DETR registers. Its configs
            use mmengine's ``OptimWrapper``, whose mixed-precision wrapper
            is mmengine's ``AmpOptimWrapper``.
    """
    from mmengine.optim import build_optim_wrapper as build_wrapper
    spec = copy.deepcopy(
        cfg.optim_wrapper if optimizer == 'config' else PLAIN_OPTIM)
    if not plugin:
        if amp:
            spec['type'] = mmengine_amp_type(spec.get('type', 'OptimWrapper'))
            spec.setdefault('loss_scale', 'dynamic')
        return build_wrapper(model, spec)

    from ..engine.buffered_grad_norm import (BufferedGradNormMixin,
                                             amp_wrapper_type)
    if amp:
        spec['type'] = amp_wrapper_type(spec.get('type', 'OptimWrapper'))
        spec.setdefault('loss_scale', 'dynamic')
    wrapper = build_wrapper(model, spec)
    # As in a run with the configs' BufferedLogRuntimeInfoHook; nothing
    # here logs the norms, make_train_step's step drops them.
    if isinstance(wrapper, BufferedGradNormMixin):
        wrapper.buffer_grad_norm = True
    return wrapper


def mmengine_amp_type(kind: str) -> str:
    """mmengine's mixed-precision wrapper for mmengine's wrapper ``kind``,
    as mmdet's ``tools/train.py --amp`` chooses it.

    Raises:
        ValueError: ``kind`` is not mmengine's ``OptimWrapper``.
    """
    if kind.rpartition('.')[2] in ('OptimWrapper', 'AmpOptimWrapper'):
        return 'AmpOptimWrapper'
    raise ValueError(f'mixed precision for mmdet\'s own arms needs '
                     f'optim_wrapper.type OptimWrapper, not {kind}')


def make_train_step(model, optim_wrapper, inputs, samples) -> Callable:
    """A closure running one full training step, as mmengine's runner does.

    Forward and losses in the wrapper's context (autocast for AMP), then
    backward (labelled ``backward`` for the profiler), grad clip, optimizer
    step and ``zero_grad`` (``optimizer``); returns the summed loss.
    """
    from torch.profiler import record_function
    model.train()

    def step() -> torch.Tensor:
        with optim_wrapper.optim_context(model):
            losses = model.loss(inputs, samples)
            loss, _ = model.parse_losses(losses)
        with record_function('backward'):
            optim_wrapper.backward(loss)
        with record_function('optimizer'):
            optim_wrapper.step()
            optim_wrapper.zero_grad()
        if hasattr(optim_wrapper, 'pop_buffered_scalars'):
            optim_wrapper.pop_buffered_scalars()
        return loss.detach()

    return step


def set_tf32(tf32: bool) -> None:
    """Float32 matrix products in TF32 (``tf32``) or in full float32, for
    the whole process (as ``MatmulTF32Hook`` sets them for a run)."""
    torch.set_float32_matmul_precision('high' if tf32 else 'highest')


def with_tf32(tf32: bool, fn: Callable) -> Callable:
    """``fn`` run with float32 matmuls in TF32 (``tf32``) or in full float32
    precision: the setting is process-wide and the arms alternate, so each
    call sets it for its own arm."""

    def call(*args, **kwargs):
        set_tf32(tf32)
        return fn(*args, **kwargs)

    return call


class Arm:
    """One model in one precision, with its training step."""

    def __init__(self, name: str, precision: str, args) -> None:
        self.name, self.precision, self.device = name, precision, args.device
        self.amp = precision == 'amp'
        source = getattr(args, 'mmdet_source', None)
        self.tf32 = arm_tf32(name, source)
        cfg = load_config(name, args.num_cp, source)
        self.model = build(name, args.num_cp, args.device, source)
        self.params_m = sum(p.numel() for p in self.model.parameters()) / 1e6
        self.optim_wrapper = build_optim_wrapper(
            self.model,
            cfg,
            self.amp,
            args.optimizer,
            plugin=not getattr(args, 'source_process', False))
        self.num_groups = len(self.optim_wrapper.optimizer.param_groups)
        inputs, samples = fake_batch(self.model, args.batch_size,
                                     args.train_size, args.boxes, True)
        self.step = with_tf32(
            self.tf32,
            make_train_step(self.model, self.optim_wrapper, inputs, samples))
        self.train_ms: List[float] = []
        self.infer_ms: List[float] = []

    def timed_step(self) -> float:
        sync(self.device)
        start = time.perf_counter()
        loss = self.step()
        sync(self.device)
        if not torch.isfinite(loss):
            raise FloatingPointError(f'{self.name} ({self.precision}): '
                                     'non-finite loss')
        return time.perf_counter() - start

    def timed_steps(self, count: int) -> float:
        """Seconds per step of ``count`` steps run back to back, without a
        synchronisation between them, as a training loop runs them: the
        host may issue a step while the GPU finishes the one before."""
        sync(self.device)
        start = time.perf_counter()
        losses = [self.step() for _ in range(count)]
        sync(self.device)
        seconds = (time.perf_counter() - start) / count
        if not torch.isfinite(torch.stack(losses)).all():
            raise FloatingPointError(f'{self.name} ({self.precision}): '
                                     'non-finite loss')
        return seconds

    def make_predict(self, args) -> Callable:
        inputs, samples = fake_batch(self.model, 1, args.infer_size,
                                     args.boxes, False)
        dtype = torch.float16 if self.device.startswith('cuda') else \
            torch.bfloat16

        @torch.no_grad()
        def predict() -> None:
            with torch.autocast(
                    self.device.split(':')[0], dtype=dtype, enabled=self.amp):
                self.model.predict(inputs, samples)

        return with_tf32(self.tf32, predict)


def build_arms(names: List[str], precisions: List[str], args) -> List[Arm]:
    """Build every arm and warm it up, measuring its own peak memory; an
    arm that fails is left out, with a line that says why."""
    cuda = args.device.startswith('cuda')
    arms = []
    for name in names:
        for precision in precisions:
            sync(args.device)
            before = torch.cuda.memory_allocated() if cuda else 0
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            try:  # one failing arm (e.g. no AMP support) spares the others
                arm = Arm(name, precision, args)
                for _ in range(args.warmup):
                    arm.timed_step()
            except Exception as exc:
                print(f'{name} ({precision}) failed, left out: '
                      f'{type(exc).__name__}: {exc}'[:400], flush=True)
                continue
            arm.peak_gib = (torch.cuda.max_memory_allocated() -
                            before) / 2**30 if cuda else 0.0
            print(f'built {name} ({precision}): {arm.params_m:.1f} M '
                  f'parameters, {arm.num_groups} optimizer groups, peak '
                  f'{arm.peak_gib:.2f} GiB', flush=True)
            arms.append(arm)
    return arms


def _round_robin(arms: List[Arm], rounds: int,
                 run: Callable[[Arm], float]) -> Dict[int, List[float]]:
    times = {i: [] for i in range(len(arms))}
    for r in range(rounds):
        for k in range(len(arms)):
            i = (r + k) % len(arms)  # rotate who goes first
            times[i].append(run(arms[i]))
    return times


def time_arms(arms: List[Arm], args) -> List[dict]:
    """Median train-step and inference times of every arm, interleaved;
    with ``args.back_to_back`` > 1 each train sample is the mean step of
    that many steps run back to back (:meth:`Arm.timed_steps`)."""
    count = getattr(args, 'back_to_back', 1)
    train = _round_robin(
        arms, args.iters, lambda arm: arm.timed_step()
        if count <= 1 else arm.timed_steps(count))
    predicts, failed = {}, {}
    for arm in arms:
        arm.model.eval()
        try:  # one failing arm (e.g. a graph capture) spares the others
            predict = arm.make_predict(args)
            for _ in range(args.warmup):
                predict()
            predicts[arm] = predict
        except Exception as exc:
            failed[arm] = f'{type(exc).__name__}: {exc}'[:300]
            print(f'inference of {arm.name} ({arm.precision}) failed: '
                  f'{failed[arm]}', flush=True)

    def infer(arm: Arm) -> float:
        sync(args.device)
        start = time.perf_counter()
        predicts[arm]()
        sync(args.device)
        return time.perf_counter() - start

    working = [arm for arm in arms if arm in predicts]
    test = _round_robin(working, args.infer_iters, infer)
    rows = []
    for i, arm in enumerate(arms):
        arm.model.train()
        infer_s = statistics.median(test[working.index(arm)]) \
            if arm in predicts else float('inf')
        rows.append(
            dict(
                model=arm.name,
                precision=arm.precision,
                params_m=arm.params_m,
                optimizer_groups=arm.num_groups,
                step_ms=1000 * statistics.median(train[i]),
                peak_gib=arm.peak_gib,
                img_per_s=1 / infer_s))
        if arm in failed:
            rows[-1]['error'] = failed[arm]
    return rows
