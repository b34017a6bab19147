"""Convergence benchmark: which auxiliary heads make Co-DETR learn faster?

Trains five arms of Co-Deformable-DETR (ResNet-18 from scratch, the
``configs/shapes/co_deformable_detr_r18_scratch_shapes*.py`` configs) on the
generated shapes data for the same number of iterations and reads the COCO
box mAP that each run computes on the validation split every
``--val-interval`` iterations (mmengine's ``IterBasedTrainLoop`` with the
config's ``CocoMetric``; no separate test pass):

    ====== =====================================================
    k0     K=0, no auxiliary head (the Deformable-DETR++ baseline)
    atss   K=1, ATSS only
    rcnn   K=1, Faster R-CNN (RPN + RoI head) only
    k2     K=2, Faster R-CNN + ATSS (the default)
    nopos  K=2 without customised positive queries
           (``with_pos_coord=False``: the heads supervise the encoder only)
    ====== =====================================================

``--arms dino_k0 dino_k2`` compares Co-DINO K=0 and K=2, ``--arms dab_k0
dab_k2`` DAB-Deformable-DETR K=0 and K=2 (``convergence_arms.py``).

The arms differ only in the model's heads: data, training seed (0, or
``--seed``), schedule, batch size and ``--amp`` are the same. Each arm is one
``tools/train.py`` process with its own work dir ``WORK/<arm>`` and log
``WORK/<arm>.log``; all start at once, assigned round-robin to the visible GPUs
(``CUDA_VISIBLE_DEVICES``), so several share a GPU; without a GPU they run on
the CPU (smoke tests).

Usage (``bash tools/analysis/run_convergence.sh`` passes its arguments
here)::

    python tools/analysis/convergence.py [WORK] [--iters 2000]
        [--val-interval 500] [--amp] [--arms k0 k2 ...]
        [--data-root data/shapes] [--num-train 2000] [--num-val 200]
        [-- extra tools/train.py arguments]
    python tools/analysis/convergence.py WORK --summarize-only

``WORK`` defaults to ``work_dirs/convergence``. ``ITERS``,
``VAL_INTERVAL``, ``ARMS`` (space-separated), ``DATA_ROOT``,
``NUM_TRAIN`` and ``NUM_VAL`` in the environment set the defaults of the
options of the same name. The data is generated first with
``tools/generate_shapes_dataset.py --seed 0`` (kept if already there with
the same parameters).

Schedule: the configs set ``max_iters = 1000`` and derive the LR step from it
at parse time (``milestones=[int(max_iters * 0.8)]``), so overriding
``max_iters`` alone would leave the step where it was. Each arm therefore
trains from a small derived config ``WORK/configs/<arm>.py`` (``_base_`` =
the arm's config) that sets ``max_iters``, ``train_cfg`` (``max_iters``,
``val_interval``), the LR step (``end = max_iters``, milestone at 80 %), the
checkpoint interval (= validation interval) and the data root together. The
linear warm-up keeps the configs' 200 iterations. Validation scalars are
logged at the training iteration because the arms' configs set
``log_metric_by_epoch=False`` (inherited by the derived configs).

Outputs, while the runs go (every ``--poll`` seconds) and at the end:
``WORK/progress.txt`` (per arm: state, last iteration, latest mAP, ETA) and
``WORK/convergence.md`` / ``.json`` / ``.png`` (mAP tables and curves); see
``projects/codetr/analysis/convergence_report.py``, which writes them. The
arms, seed and LR step are defined in
``projects/codetr/analysis/convergence_arms.py``, the driver in
``projects/codetr/analysis/convergence.py``.

``--summarize-only`` writes these three from the logs as they are, e.g.
while the runs are still going. The driver exits with 1 if an arm failed
or a validation result is missing. Stop the whole benchmark with
``kill <driver pid>`` (it stops the arms and summarises) or
``kill -- -<process group>`` when started with ``setsid``.

Time: about ITERS x (seconds per iteration while five processes share the
GPU) plus ITERS / VAL_INTERVAL evaluations of the validation images per
arm; ``progress.txt`` shows the measured time per iteration and an ETA once
the first training line is logged. No GPU timing was taken for this script.
On two CPU cores (another job running beside it) the smoke run of all five
arms, ``--iters 20 --val-interval 10 --num-train 40 --num-val 10 --
--cfg-options train_dataloader.batch_size=1``, took 26 minutes and about
2.5-3 GB of memory per arm; with the configs' batch of 4 an arm needs
about 7.5 GB on the CPU.
"""
import argparse
import os
import sys
from typing import List, Optional, Sequence, Tuple

try:
    from projects.codetr.analysis.convergence import run
    from projects.codetr.analysis.convergence_arms import (ARMS, DEFAULT_ARMS,
                                                           SEED)
    from projects.codetr.analysis.convergence_report import summarize
except ModuleNotFoundError as err:  # the plugin or a dependency is missing
    sys.exit(f'error: {err}. Install the codetr plugin and its dependencies: '
             '`bash tools/install.sh` from the repository root.')


def parse_args(
    argv: Optional[Sequence[str]] = None
) -> Tuple[argparse.Namespace, List[str]]:
    """The driver's options and the ``tools/train.py`` arguments after
    ``--``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args = []
    if '--' in argv:
        cut = argv.index('--')
        argv, train_args = argv[:cut], argv[cut + 1:]
    env = os.environ.get
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        epilog='See the top of tools/analysis/convergence.py.')
    parser.add_argument(
        'work',
        nargs='?',
        default='work_dirs/convergence',
        help='output folder of the benchmark (%(default)s)')
    parser.add_argument(
        '--iters',
        type=int,
        default=int(env('ITERS', 2000)),
        help='training iterations per arm (%(default)s)')
    parser.add_argument(
        '--val-interval',
        type=int,
        default=int(env('VAL_INTERVAL', 500)),
        help='validate and checkpoint every N iterations '
        '(%(default)s)')
    parser.add_argument(
        '--arms',
        nargs='+',
        choices=list(ARMS),
        default=env('ARMS', ' '.join(DEFAULT_ARMS)).split(),
        help='arms to train (default: the five Co-Deformable-DETR arms; '
        "'dino_k0 dino_k2' for Co-DINO)")
    parser.add_argument(
        '--seed',
        type=int,
        default=int(env('SEED', SEED)),
        help='training seed of every arm (%(default)s); the data are '
        'generated with seed 0 whatever it is')
    parser.add_argument(
        '--amp',
        action='store_true',
        help='mixed precision in every arm (GPU only)')
    parser.add_argument('--data-root', default=env('DATA_ROOT', 'data/shapes'))
    parser.add_argument(
        '--num-train', type=int, default=int(env('NUM_TRAIN', 2000)))
    parser.add_argument(
        '--num-val', type=int, default=int(env('NUM_VAL', 200)))
    parser.add_argument(
        '--poll',
        type=float,
        default=60,
        help='seconds between updates of progress.txt')
    parser.add_argument(
        '--summarize-only',
        action='store_true',
        help='only write the tables and the plot from the '
        'logs so far (runs may still be going)')
    args = parser.parse_args(argv)
    unknown = sorted(set(args.arms) - set(ARMS))  # from ARMS=...
    if unknown:
        parser.error(f'unknown arms {unknown}; choose from {list(ARMS)}')
    if args.val_interval < 1 or args.iters < args.val_interval:
        parser.error('need 1 <= --val-interval <= --iters')
    return args, train_args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, train_args = parse_args(argv)
    if args.summarize_only:
        return 0 if summarize(args.work) else 1
    return 0 if run(args, train_args) else 1


if __name__ == '__main__':
    sys.exit(main())
