# The synthetic shapes dataset (./shapes_detection.py) at about its generated
# image size: the COCO recipe's augmentation with every size scaled by 0.6
# (short side 256-480 instead of 480-800, long side at most 800), 4 images
# per GPU. Image loading as in ./coco_detection.py.
_base_ = './shapes_detection.py'

# Policy A: multi-scale resize; policy B: resize, random crop, policy A.
_multiscale = [(256, 800), (288, 800), (320, 800), (352, 800), (384, 800),
               (416, 800), (448, 800), (480, 800)]
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
val_dataloader = dict(
    dataset=dict(pipeline=[
        dict(type='RobustLoadImageFromFile', on_error='raise'),
        *test_pipeline[1:]
    ]))
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
