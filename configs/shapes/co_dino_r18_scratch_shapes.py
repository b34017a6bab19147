# Co-DINO trained from scratch on the synthetic shapes data: the Co-DINO arm
# of the GPU convergence study (K=2 here, K=0 in the *_k0 variant), with the
# data, backbone recipe (ResNet-18, BN trained, no pretrained weights),
# seed and schedule of the Co-Deformable-DETR shapes arms
# (co_deformable_detr_r18_scratch_shapes.py, run there for 2000 iterations).
#
# Data, runtime and schedule are inherited from that config; the model is the
# Co-DINO one of ../_base_/co_dino_5scale_r50.py with its 5-scale ResNet-18
# neck: only the parts that differ from Co-Deformable-DETR are set here.
_base_ = './co_deformable_detr_r18_scratch_shapes.py'

_strides = [4, 8, 16, 32, 64, 128]  # 6-level auxiliary pyramid
model = dict(
    backbone=dict(out_indices=(0, 1, 2, 3)),
    neck=dict(in_channels=[64, 128, 256, 512], num_outs=5),
    # The whole query head is Co-DINO's (the Co-Deformable one is dropped).
    query_head=dict(
        _delete_=True,
        type='CoDINOHead',
        num_query=900,
        embed_dims=256,
        sync_cls_avg_factor=True,
        max_pos_coords=300,
        lambda_1=1.0,
        dn_cfg=dict(
            label_noise_scale=0.5,
            box_noise_scale=1.0,
            group_cfg=dict(dynamic=True, num_groups=None,
                           num_dn_queries=100)),
        transformer=dict(
            type='CoDinoTransformer',
            num_feature_levels=5,
            encoder=dict(
                num_layers=6,
                layer_cfg=dict(
                    self_attn_cfg=dict(
                        embed_dims=256,
                        num_heads=8,
                        num_levels=5,
                        num_points=4,
                        dropout=0.0,
                        batch_first=True),
                    ffn_cfg=dict(
                        embed_dims=256,
                        feedforward_channels=2048,
                        ffn_drop=0.0))),
            decoder=dict(
                num_layers=6,
                return_intermediate=True,
                post_norm_cfg=None,
                layer_cfg=dict(
                    self_attn_cfg=dict(
                        embed_dims=256,
                        num_heads=8,
                        attn_drop=0.0,
                        proj_drop=0.0,
                        batch_first=True),
                    cross_attn_cfg=dict(
                        embed_dims=256,
                        num_heads=8,
                        num_levels=5,
                        num_points=4,
                        dropout=0.0,
                        batch_first=True),
                    ffn_cfg=dict(
                        embed_dims=256,
                        feedforward_channels=2048,
                        ffn_drop=0.0)))),
        positional_encoding=dict(
            num_feats=128, normalize=True, offset=0.0, temperature=20),
        loss_cls=dict(
            type='QualityFocalLoss',
            use_sigmoid=True,
            beta=2.0,
            loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=5.0),
        loss_iou=dict(type='GIoULoss', loss_weight=2.0),
        train_cfg=dict(
            assigner=dict(
                type='HungarianAssigner',
                match_costs=[
                    dict(type='FocalLossCost', weight=2.0),
                    dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
                    dict(type='IoUCost', iou_mode='giou', weight=2.0)
                ])),
        test_cfg=dict(
            max_per_img=300, nms=dict(type='soft_nms', iou_threshold=0.8))),
    rpn_head=dict(anchor_generator=dict(strides=_strides)),
    roi_head=dict(
        rcnn=dict(
            bbox_roi_extractor=dict(
                featmap_strides=_strides[:5], finest_scale=56))),
    bbox_head=dict(atss=dict(anchor_generator=dict(strides=_strides))))

# Released Co-DINO: only the backbone at lr x0.1.
optim_wrapper = dict(
    paramwise_cfg=dict(
        custom_keys=dict(_delete_=True, backbone=dict(lr_mult=0.1))))

# 2000 iterations, 200-iteration warm-up, LR step at 1600 (as the
# Co-Deformable-DETR arms were run), evaluation every 500.
max_iters = 2000
train_cfg = dict(max_iters=max_iters, val_interval=500)
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
