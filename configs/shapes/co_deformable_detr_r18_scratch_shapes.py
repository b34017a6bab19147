# Co-Deformable-DETR trained from scratch on the synthetic shapes data: the
# GPU convergence study (K=2 here, K=0 in the *_k0 variant, same schedule and
# seed) and the GPU branch of the quickstart.
#
# No pretrained weights can be loaded offline, so the backbone is a
# ResNet-18 whose BatchNorm trains (a frozen BN with untrained statistics and
# zero-initialised residual scales would switch the residual branches off).
# That and the iteration-based schedule with a short warm-up are the only
# changes from the small shapes config.
_base_ = './co_deformable_detr_r50_shapes_small.py'

model = dict(
    backbone=dict(
        depth=18,
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        init_cfg=None),
    neck=dict(in_channels=[128, 256, 512]))

max_iters = 1000
train_cfg = dict(
    _delete_=True,
    type='IterBasedTrainLoop',
    max_iters=max_iters,
    val_interval=500)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
         end=200),
    dict(
        type='MultiStepLR',
        by_epoch=False,
        begin=0,
        end=max_iters,
        milestones=[int(max_iters * 0.8)],
        gamma=0.1)
]
default_hooks = dict(
    # IterBasedTrainLoop leaves runner.epoch at 0: log val metrics by iteration
    logger=dict(interval=50, log_metric_by_epoch=False),
    checkpoint=dict(by_epoch=False, interval=500, max_keep_ckpts=2))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
