# Co-DINO 5-scale Swin-L with large-scale jitter (LSJ) at 1280 px, 12 epochs
# on COCO 2017 (published: 59.3 box AP, Sense-X/Co-DETR README). Released
# config: co_dino/co_dino_5scale_lsj_swin_large_1x_coco.py: the Swin-L
# model with the LSJ data of co_dino_5scale_r50_lsj_1x_coco.py at
# 1280x1280 (see there for the padding, Copy-Paste and loader notes).
_base_ = './co_dino_5scale_swin_large_1x_coco.py'

image_size = (1280, 1280)
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
    batch_sampler=None,  # every image is padded to the same size
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
