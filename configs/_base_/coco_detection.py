# COCO 2017 detection data, with the DETR augmentation of the released
# configs (Co-Deformable-DETR and Co-DINO share it).
#
# Image loading: training skips an unreadable image with a warning naming it
# (another image is drawn in its place) instead of stopping hours into a
# run; validation stops with an error naming it, since every image must
# count (RobustLoadImageFromFile, projects/codetr/datasets/robust_loading.py).
# The test pipeline keeps mmcv's LoadImageFromFile: mmdet's inference APIs
# (init_detector + inference_detector, DetInferencer) find that step by its
# type and replace it, and tools/test.py switches it to the raising loader.
dataset_type = 'CocoDataset'
data_root = 'data/coco/'
backend_args = None

# Policy A of the DETR multi-scale augmentation: short side 480..800.
_multiscale = [(480, 1333), (512, 1333), (544, 1333), (576, 1333),
               (608, 1333), (640, 1333), (672, 1333), (704, 1333),
               (736, 1333), (768, 1333), (800, 1333)]
train_pipeline = [
    dict(type='RobustLoadImageFromFile', on_error='skip',
         backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=_multiscale,
                  keep_ratio=True)],
            [
                # Policy B: resize, random crop, then policy A.
                dict(type='RandomChoiceResize',
                     scales=[(400, 4200), (500, 4200), (600, 4200)],
                     keep_ratio=True),
                dict(type='RandomCrop',
                     crop_type='absolute_range',
                     crop_size=(384, 600),
                     allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=_multiscale,
                     keep_ratio=True)
            ]
        ]),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=(1333, 800), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor'))
]

train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        # Images without annotations train too (they teach background).
        filter_cfg=dict(filter_empty_gt=False, min_size=32),
        pipeline=train_pipeline,
        backend_args=backend_args))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='val2017/'),
        test_mode=True,
        # the test pipeline with the raising loader
        pipeline=[
            dict(type='RobustLoadImageFromFile', on_error='raise',
                 backend_args=backend_args), *test_pipeline[1:]
        ],
        backend_args=backend_args))
# The validation data, read with the test pipeline.
test_dataloader = dict(
    val_dataloader,
    dataset=dict(val_dataloader['dataset'], pipeline=test_pipeline))

val_evaluator = dict(
    type='CocoMetric',
    ann_file=data_root + 'annotations/instances_val2017.json',
    metric='bbox',
    format_only=False,
    backend_args=backend_args)
test_evaluator = val_evaluator
