# Co-DINO 5-scale R50 with large-scale jitter (LSJ), 12 epochs on COCO 2017
# (published: 52.1 box AP, Sense-X/Co-DETR README). Released config:
# co_dino/co_dino_5scale_lsj_r50_1x_coco.py. The model is the DETR-augmented
# recipe's; only the data differ: scale jitter 0.1-2.0 of 1024x1024, random
# 1024x1024 crops padded to 1024x1024 with grey (114), and Copy-Paste.
#
# The released model sets `with_attn_mask=False` so that the padding is not
# masked out of attention: the fixed-size padding is image. In mmdet 3.x,
# `Pad` sets `img_shape` to the padded size, so every pixel is already
# unmasked (training and test) and nothing needs setting here.
#
# Copy-Paste pastes object masks: the annotations need segmentations.
# Image loading as in _base_/coco_detection.py.
_base_ = './co_dino_5scale_r50_1x_coco.py'

image_size = (1024, 1024)
dataset_type = 'CocoDataset'
data_root = 'data/coco/'
backend_args = None

load_pipeline = [
    dict(type='RobustLoadImageFromFile', on_error='skip',
         backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(
        type='RandomResize',
        scale=image_size,
        ratio_range=(0.1, 2.0),
        keep_ratio=True),
    dict(
        type='RandomCrop',
        crop_type='absolute_range',
        crop_size=image_size,
        recompute_bbox=True,
        allow_negative_crop=True),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Pad', size=image_size, pad_val=dict(img=(114, 114, 114))),
]
train_pipeline = [
    dict(type='CopyPaste', max_num_pasted=100),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='Pad', size=image_size, pad_val=dict(img=(114, 114, 114))),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor'))
]

train_dataloader = dict(
    # Every image is padded to the same size: no aspect-ratio grouping.
    batch_sampler=None,
    dataset=dict(
        _delete_=True,
        type='MultiImageMixDataset',  # Copy-Paste draws a second image
        dataset=dict(
            type=dataset_type,
            data_root=data_root,
            ann_file='annotations/instances_train2017.json',
            data_prefix=dict(img='train2017/'),
            filter_cfg=dict(filter_empty_gt=False, min_size=32),
            pipeline=load_pipeline,
            backend_args=backend_args),
        pipeline=train_pipeline))
val_dataloader = dict(
    dataset=dict(pipeline=[
        dict(type='RobustLoadImageFromFile', on_error='raise',
             backend_args=backend_args), *test_pipeline[1:]
    ]))
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
