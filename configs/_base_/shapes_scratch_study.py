# The protocol of the shapes convergence study, everything but the model:
# the synthetic shapes data at about their generated size, the released
# optimizer, training from scratch by iteration (1000 iterations, a
# 200-iteration linear warm-up, the learning rate x0.1 at 80%), validation
# and checkpoints every 500 iterations, and a fixed seed. Each arm
# (../shapes/*_r18_scratch_shapes*.py) inherits a model base and this file.
_base_ = [
    './shapes_detection_small.py', './schedules/co_detr_1x.py',
    './default_runtime.py'
]

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
