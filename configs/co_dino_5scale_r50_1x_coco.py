# Co-DINO 5-scale R50, 12 epochs on COCO 2017 (published: 52.1 box AP).
# 8 GPUs x 2 images; with another total batch size pass --auto-scale-lr.
# Data pipeline as Co-Deformable-DETR's (the released configs share it).
_base_ = [
    './_base_/co_dino_5scale_r50.py', './_base_/coco_detection.py',
    './_base_/default_runtime.py'
]

optim_wrapper = dict(
    type='OptimWrapper',
    # the paramwise_cfg's options in a few optimizer groups, not ~500
    constructor='MergedGroupsOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=2e-4, weight_decay=1e-4),
    clip_grad=dict(max_norm=0.1, norm_type=2),
    # Released: only the backbone at lr x0.1 (no sampling_offsets rule).
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

# Learning rate is set for 16 images per step (8 GPUs x 2).
auto_scale_lr = dict(base_batch_size=16)
