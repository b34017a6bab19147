# Co-DINO trained from scratch on the synthetic shapes data: the Co-DINO arm
# of the GPU convergence study (K=2 here, K=0 in the *_k0 variant), with the
# protocol (../_base_/shapes_scratch_study.py) and backbone recipe
# (ResNet-18, BN trained, no pretrained weights) of the Co-Deformable-DETR
# arms (co_deformable_detr_r18_scratch_shapes.py), run for 2000 iterations
# as those arms were.
#
# The model is ../_base_/co_dino_5scale_r50.py with the ResNet-18 backbone
# and its 5-scale neck widths; the optimizer is the released Co-DINO one
# (only the backbone at lr x0.1).
_base_ = [
    '../_base_/co_dino_5scale_r50.py', '../_base_/shapes_scratch_study.py'
]

model = dict(
    num_classes=6,
    backbone=dict(
        depth=18,
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512]),
    # No activation checkpointing (mmdet's default, -1): the released R50
    # recipe's 4 checkpointed encoder layers save memory these small images
    # do not need (the computation is the same).
    query_head=dict(transformer=dict(encoder=dict(num_cp=-1))))

# 2000 iterations, LR step at 1600, evaluation every 500.
max_iters = 2000
train_cfg = dict(max_iters=max_iters)
param_scheduler = [
    _base_.param_scheduler[0],  # the warm-up
    dict(_base_.param_scheduler[1], end=max_iters,
         milestones=[int(max_iters * 0.8)])
]
