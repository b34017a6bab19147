# Co-Deformable-DETR R50 on the synthetic shapes dataset, small and short:
# images at about their generated size (short side 256-480 instead of COCO's
# 480-800) and 8 epochs. The model is that of the R50 COCO config apart from
# num_classes; data and schedule are what change.
#
# Data: python tools/generate_shapes_dataset.py --out data/shapes \
#           --num-train 2000 --num-val 200
# Train (1 GPU): python tools/train.py \
#           configs/shapes/co_deformable_detr_r50_shapes_small.py
_base_ = './co_deformable_detr_r50_1x_shapes.py'

# Policy A: multi-scale resize; policy B: resize, random crop, policy A.
# The COCO recipe's sizes scaled by 0.6 (max side 1333 -> 800).
_multiscale = [(256, 800), (288, 800), (320, 800), (352, 800), (384, 800),
               (416, 800), (448, 800), (480, 800)]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=_multiscale,
                  keep_ratio=True)],
            [
                dict(type='RandomChoiceResize',
                     scales=[(240, 2520), (300, 2520), (360, 2520)],
                     keep_ratio=True),
                dict(type='RandomCrop',
                     crop_type='absolute_range',
                     crop_size=(230, 360),
                     allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=_multiscale,
                     keep_ratio=True)
            ]
        ]),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(800, 384), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor'))
]
train_dataloader = dict(
    batch_size=4, num_workers=4, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

max_epochs = 8
train_cfg = dict(max_epochs=max_epochs, val_interval=1)
param_scheduler = [
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[7],
        gamma=0.1)
]
default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=3))
