# Quickstart: the whole Co-Deformable-DETR (query head, Faster R-CNN and ATSS
# auxiliary heads, customised positive queries) shrunk to train on two CPU
# cores in about ten minutes on small generated images. `make quickstart`
# generates the data, trains this config and evaluates it with tools/test.py;
# with a GPU it trains 4x longer (QUICKSTART_ITERS).
#
# Shrunk relative to co_deformable_detr_r18_scratch_shapes.py, for the CPU:
# a half-width ResNet-18, 3 encoder and 3 decoder layers, 100 queries, FFN
# 512, 300 RPN proposals and 128 sampled RoIs per image (mmcv's CPU RoIAlign
# dominates the step otherwise), a 256-d RoI head, images of 160-256 px.
# Structure, losses, assigners and loss weights are those of the R50 config.
_base_ = './co_deformable_detr_r18_scratch_shapes.py'

data_root = 'data/shapes_quick/'
model = dict(
    backbone=dict(base_channels=32),
    neck=dict(in_channels=[64, 128, 256]),
    rpn_head=dict(proposal_cfg=dict(nms_pre=1000, max_per_img=300)),
    roi_head=dict(
        rcnn=dict(
            bbox_head=dict(fc_out_channels=256),
            train_cfg=dict(sampler=dict(num=128)))),
    query_head=dict(
        num_query=100,
        transformer=dict(
            encoder=dict(
                num_layers=3,
                layer_cfg=dict(ffn_cfg=dict(feedforward_channels=512))),
            decoder=dict(
                num_layers=3,
                layer_cfg=dict(ffn_cfg=dict(feedforward_channels=512))))))

_scales = [(160, 320), (192, 320), (224, 320), (256, 320)]
train_pipeline = [
    dict(type='RobustLoadImageFromFile', on_error='skip'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomChoiceResize', scales=_scales, keep_ratio=True),
    dict(type='PackDetInputs')
]
# The base's test pipeline, resizing to at most 320x224.
test_pipeline = [
    _base_.test_pipeline[0],
    dict(type='Resize', scale=(320, 224), keep_ratio=True),
    *_base_.test_pipeline[2:]
]
# Image loading as in ../_base_/coco_detection.py.
train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    dataset=dict(
        data_root=data_root,
        pipeline=[
            dict(type='RobustLoadImageFromFile', on_error='raise'),
            *test_pipeline[1:]
        ]))
test_dataloader = dict(
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

max_iters = 400
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(_base_.param_scheduler[0], end=100),
    dict(_base_.param_scheduler[1], end=max_iters,
         milestones=[int(max_iters * 0.8)])
]
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(by_epoch=False, interval=200, max_keep_ckpts=1))
