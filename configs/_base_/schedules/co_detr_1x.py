# The released training recipe, 12 epochs ("1x"): AdamW at lr 2e-4 for 16
# images per step (8 GPUs x 2), weight decay 1e-4, gradients clipped at norm
# 0.1, the backbone at lr x0.1, and the learning rate x0.1 after epoch 11.
#
# Longer schedules inherit a 1x config and state only the length and the
# step, e.g. 36 epochs with the step after epoch 30:
#     max_epochs = 36
#     train_cfg = dict(max_epochs=max_epochs)
#     param_scheduler = [
#         dict(_base_.param_scheduler[0], end=max_epochs, milestones=[30])]
# (a list replaces the inherited one whole; `_base_.param_scheduler[0]` is
# the step scheduler below, so only `end` and `milestones` are restated).
#
# The wrapper is mmengine's OptimWrapper keeping the clipped gradient norm on
# the device until the logger needs it, and AdamW is torch's fused kernel,
# which also takes AMP's overflow flag on the device: neither makes the host
# wait for the backward pass (projects/codetr/engine/buffered_grad_norm.py).
optim_wrapper = dict(
    type='BufferedGradNormOptimWrapper',
    # the paramwise_cfg's options in a few optimizer groups, not ~500
    constructor='MergedGroupsOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=2e-4, weight_decay=1e-4, fused=True),
    clip_grad=dict(max_norm=0.1, norm_type=2),
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.1)}))

max_epochs = 12
train_cfg = dict(
    type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[11],
        gamma=0.1)
]

# The learning rate above is for this many images per step; with another
# total batch size pass --auto-scale-lr to tools/train.py.
auto_scale_lr = dict(base_batch_size=16)
