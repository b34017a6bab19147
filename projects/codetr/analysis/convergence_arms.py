"""What the convergence benchmark compares: its arms, seed, LR step and
evaluation points.

Shared by the driver (:mod:`.convergence`, which trains the arms) and the
summary (:mod:`.convergence_report`, which reads their logs).
"""
from typing import List

_CFG = 'configs/shapes/co_deformable_detr_r18_scratch_shapes'
_DINO = 'configs/shapes/co_dino_r18_scratch_shapes'
_DAB = 'configs/shapes/co_dab_deformable_detr_r18_scratch_shapes'
# name -> (label in tables and plots, config relative to the repository)
ARMS = {
    'k0': ('K=0', f'{_CFG}_k0.py'),
    'atss': ('K=1 ATSS', f'{_CFG}_atss.py'),
    'rcnn': ('K=1 Faster R-CNN', f'{_CFG}_rcnn.py'),
    'k2': ('K=2 (R-CNN + ATSS)', f'{_CFG}.py'),
    'nopos': ('K=2, no pos. queries', f'{_CFG}_nopos.py'),
    # Co-DINO (900 queries, denoising, 5 scales): the same data and schedule
    'dino_k0': ('Co-DINO K=0', f'{_DINO}_k0.py'),
    'dino_k2': ('Co-DINO K=2', f'{_DINO}.py'),
    # DAB-Deformable-DETR (learnt anchor queries): the same data and schedule
    'dab_k0': ('DAB-Def. K=0', f'{_DAB}_k0.py'),
    'dab_k2': ('Co-DAB-Def. K=2', f'{_DAB}.py'),
}
# what runs when no arm is named: the five Co-Deformable-DETR arms
DEFAULT_ARMS = ('k0', 'atss', 'rcnn', 'k2', 'nopos')
SEED = 0  # data and training; training seed: --seed
LR_STEP = (4, 5)  # the configs' milestones=[int(max_iters * 0.8)], exactly


def lr_step_at(iters: int) -> int:
    """The LR step of an ``iters``-iteration run: ``floor(0.8 * iters)`` in
    integer arithmetic."""
    return iters * LR_STEP[0] // LR_STEP[1]


def expected_val_iters(iters: int, val_interval: int) -> List[int]:
    """Iterations at which ``IterBasedTrainLoop`` validates: every
    ``val_interval`` and after the last one."""
    return sorted(set(range(val_interval, iters + 1, val_interval)) | {iters})
