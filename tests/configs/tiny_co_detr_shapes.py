# configs/shapes/co_deformable_detr_r50_shapes_small.py shrunk to train for a
# few iterations on the CPU in seconds: ResNet-18 with 16 base channels, one
# encoder and two decoder layers, 10 queries, narrow auxiliary heads, 64-96 px
# images, 2 epochs.
# The structure (query head, RPN + RoI and ATSS auxiliary heads, losses,
# assigners, optimizer, pipeline steps and image loaders) is that of the
# real config. Tests
# inherit it and set data_root in every dataloader and ann_file in every
# evaluator.
_base_ = '../../configs/shapes/co_deformable_detr_r50_shapes_small.py'

# The transformer keeps its 256-wide features; the auxiliary heads' own
# layers are narrowed.
model = dict(
    backbone=dict(
        _delete_=True,
        type='ResNet',
        depth=18,
        base_channels=16,
        num_stages=4,
        out_indices=(1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=False),
        norm_eval=True,
        style='pytorch',
        init_cfg=None),
    neck=dict(in_channels=[32, 64, 128]),
    query_head=dict(
        num_query=10,
        # top-k over num_query x num_classes = 60 scores
        test_cfg=dict(max_per_img=20),
        transformer=dict(
            encoder=dict(
                num_layers=1,
                # gradient checkpointing, so that the 2-process (DDP) runs
                # of test_tools.py exercise it too
                num_cp=1,
                layer_cfg=dict(ffn_cfg=dict(feedforward_channels=64))),
            decoder=dict(
                num_layers=2,
                layer_cfg=dict(ffn_cfg=dict(feedforward_channels=64))))),
    rpn_head=dict(
        feat_channels=32,
        proposal_cfg=dict(nms_pre=300, max_per_img=100),
        test_cfg=dict(nms_pre=300, max_per_img=100)),
    roi_head=dict(
        rcnn=dict(
            bbox_head=dict(fc_out_channels=32),
            train_cfg=dict(sampler=dict(num=64)))),
    # GroupNorm's 32 groups need >= 2 channels each on 1x1 feature maps.
    bbox_head=dict(atss=dict(feat_channels=64)))

_multiscale = [(64, 128), (80, 128), (96, 128)]
train_pipeline = [
    dict(type='RobustLoadImageFromFile', on_error='skip'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=_multiscale,
                  keep_ratio=True)],
            [
                dict(type='RandomChoiceResize', scales=[(64, 256)],
                     keep_ratio=True),
                dict(type='RandomCrop', crop_type='absolute_range',
                     crop_size=(48, 64), allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=_multiscale,
                     keep_ratio=True)
            ]
        ]),
    dict(type='PackDetInputs')
]
# The base's test pipeline, resizing to at most 128x96.
test_pipeline = [
    _base_.test_pipeline[0],
    dict(type='Resize', scale=(128, 96), keep_ratio=True),
    *_base_.test_pipeline[2:]
]
train_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0,
    persistent_workers=False,
    dataset=dict(pipeline=[
        dict(type='RobustLoadImageFromFile', on_error='raise'),
        *test_pipeline[1:]
    ]))
test_dataloader = dict(
    num_workers=0,
    persistent_workers=False,
    dataset=dict(pipeline=test_pipeline))

max_epochs = 2
train_cfg = dict(max_epochs=max_epochs, val_interval=1)
# The learning rate drops between the epochs, so a resumed run must restore
# the scheduler to match an uninterrupted one.
param_scheduler = [
    dict(_base_.param_scheduler[0], end=max_epochs, milestones=[1])
]
default_hooks = dict(logger=dict(interval=1))
log_processor = dict(window_size=1)
randomness = dict(seed=0)
