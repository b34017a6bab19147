"""Training throughput through ``tools/train.py``: the user's iteration time.

The benchmark (``tools/analysis/benchmark.py``) times the model's training
step on a batch already in GPU memory. A user waits for ``tools/train.py``:
the config's data pipeline and workers, the runner's hooks and the
multi-scale input sizes come on top. This module runs ``tools/train.py``
on generated images of COCO size (``tools/generate_shapes_dataset.py``)
and reads back the iteration times the runner logged
(``scalars.json``: ``time`` is a whole iteration, ``data_time`` the part
spent waiting for the data loader), so that the two can be compared.

The training set is declared with the 6 shapes classes (labels 0-5 of the
config's 80), so that every image keeps its boxes and every head its
positives; the data check is skipped and validation is never reached
(``val_begin`` after the last epoch, or ``val_interval`` after the last
iteration): the 80-class evaluation does not fit the data, and it is not
part of what a training iteration costs.
"""
import os
import os.path as osp
import statistics
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

from ..datasets.shapes_drawing import SHAPES_CLASSES
from . import REPO_ROOT
from .curves import find_scalar_files, read_scalars

# the sides of COCO's images (at most 640 px, aspect up to about 1.6)
COCO_SIZES = ('--min-side', '400', '--max-side', '640', '--max-aspect', '1.6')


def generate_command(data_root: str, num_images: int) -> List[str]:
    """``tools/generate_shapes_dataset.py`` writing ``num_images`` training
    images of COCO size (and 8 validation images) to ``data_root``."""
    return [
        sys.executable,
        osp.join(REPO_ROOT, 'tools', 'generate_shapes_dataset.py'), '--out',
        data_root, '--num-train',
        str(num_images), '--num-val', '8', *COCO_SIZES
    ]


def train_command(config: str,
                  data_root: str,
                  work_dir: str,
                  iters: int,
                  log_interval: int = 10,
                  extra_options: Sequence[str] = ()) -> List[str]:
    """``tools/train.py`` training ``config`` on the generated data at
    ``data_root`` (one epoch of an epoch-based config, ``iters`` iterations
    of an iteration-based one), with the config's data pipeline, workers,
    optimizer and hooks.

    Args:
        config (str): A COCO config, e.g.
            ``configs/co_deformable_detr_r50_1x_coco.py``.
        data_root (str): Output of :func:`generate_command`.
        work_dir (str): Where the run writes its logs.
        iters (int): Iterations of an iteration-based config (an epoch of
            the generated data for an epoch-based one).
        log_interval (int): Iterations per logged time (mmengine logs the
            mean over each interval).
        extra_options (Sequence[str]): More ``key=value`` config overrides.
    """
    from mmengine.config import Config
    loop = Config.fromfile(config).train_cfg
    if loop.get('type') == 'IterBasedTrainLoop':
        schedule = [f'train_cfg.max_iters={iters}',
                    f'train_cfg.val_interval={iters + 1}']
    else:  # never reach validation: its 80 COCO classes are not the data's
        schedule = ['train_cfg.max_epochs=1', 'train_cfg.val_begin=2']
    root = osp.abspath(data_root).rstrip('/') + '/'
    options = [
        f'train_dataloader.dataset.data_root={root}',
        'train_dataloader.dataset.ann_file=annotations/instances_train.json',
        'train_dataloader.dataset.data_prefix.img=train/',
        # the generated categories, not COCO's (which would drop every box)
        'train_dataloader.dataset.metainfo.classes='
        f'[{",".join(SHAPES_CLASSES)}]',
        f'val_dataloader.dataset.data_root={root}',
        'val_dataloader.dataset.ann_file=annotations/instances_val.json',
        'val_dataloader.dataset.data_prefix.img=val/',
        f'val_evaluator.ann_file={root}annotations/instances_val.json',
        *schedule,
        f'default_hooks.logger.interval={log_interval}',
        # each logged time the mean of its own interval only
        f'log_processor.window_size={log_interval}',
        # no pretrained backbone can be downloaded; speed does not need it
        'model.backbone.init_cfg=None',
        *extra_options,
    ]
    return [
        sys.executable,
        osp.join(REPO_ROOT, 'tools', 'train.py'), config, '--work-dir',
        work_dir, '--skip-data-check', '--cfg-options', *options
    ]


def summarize(work_dir: str, skip: int) -> Dict[str, float]:
    """Median iteration and data-loading times of the run in ``work_dir``.

    Args:
        work_dir (str): The work dir of a finished (or stopped) run.
        skip (int): Iterations left out at the start (warm-up: cuDNN's
            algorithm search, the allocator, the workers' start).

    Returns:
        dict: ``iter_ms`` and ``data_ms`` (medians over the logged
        intervals after ``skip``), ``data_fraction`` (``data_ms`` over
        ``iter_ms``), ``intervals`` (how many were used) and
        ``last_iter``.

    Raises:
        RuntimeError: If the run logged no iteration time after ``skip``.
    """
    train, _ = read_scalars(find_scalar_files(work_dir))
    times = train.get('time', {})
    data = train.get('data_time', {})
    steps = sorted(s for s in times if s > skip and s in data)
    if not steps:
        raise RuntimeError(
            f'{work_dir}: no iteration time logged after iteration {skip} '
            f'(logged: {sorted(times)[-3:] or "none"}); train longer '
            '(more images) or pass a smaller --skip')
    iter_ms = statistics.median(times[s] for s in steps) * 1e3
    data_ms = statistics.median(data[s] for s in steps) * 1e3
    return dict(
        iter_ms=iter_ms,
        data_ms=data_ms,
        data_fraction=data_ms / iter_ms,
        intervals=len(steps),
        last_iter=steps[-1])


def run(config: str,
        work_dir: str,
        num_images: int,
        skip: int,
        data_root: Optional[str] = None,
        extra_options: Sequence[str] = ()) -> Dict[str, float]:
    """Generate the data (unless ``data_root`` holds it), train one epoch
    with ``tools/train.py`` and summarise its logged times
    (:func:`summarize`). The training log streams to the console.

    Raises:
        subprocess.CalledProcessError: If the data generation or the
            training fails (its own error is printed above).
    """
    data_root = data_root or osp.join(work_dir, 'data')
    ann = osp.join(data_root, 'annotations', 'instances_train.json')
    env = dict(os.environ)
    # the subprocesses import the plugin from this checkout
    env['PYTHONPATH'] = os.pathsep.join(
        p for p in (REPO_ROOT, env.get('PYTHONPATH')) if p)
    if not osp.exists(ann):
        subprocess.run(
            generate_command(data_root, num_images), check=True, env=env)
    from mmengine.config import Config
    batch_size = Config.fromfile(config).train_dataloader.batch_size
    subprocess.run(
        train_command(config, data_root, osp.join(work_dir, 'run'),
                      num_images // batch_size,
                      extra_options=extra_options),
        check=True,
        env=env)
    return summarize(osp.join(work_dir, 'run'), skip)
