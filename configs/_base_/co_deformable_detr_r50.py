# Co-Deformable-DETR, ResNet-50, with the default auxiliary heads (Faster
# R-CNN + ATSS, aux_heads/faster_rcnn_atss.py): the model only. Experiment
# configs inherit this file.
_base_ = './aux_heads/faster_rcnn_atss.py'

model = dict(
    type='CoDETR',
    num_classes=80,  # the one setting for every head
    with_pos_coord=True,
    eval_module='detr',  # or 'one-stage' (ATSS) / 'two-stage' (RPN + RoI)
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=1),
    backbone=dict(
        type='ResNet',
        depth=50,
        num_stages=4,
        out_indices=(1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=False),
        norm_eval=True,
        style='pytorch',
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')),
    neck=dict(
        type='ChannelMapper',
        in_channels=[512, 1024, 2048],
        kernel_size=1,
        out_channels=256,
        act_cfg=None,
        norm_cfg=dict(type='GN', num_groups=32),
        num_outs=4),
    query_head=dict(
        type='CoDeformDETRHead',
        num_query=300,
        embed_dims=256,
        sync_cls_avg_factor=True,
        max_pos_coords=300,
        lambda_1=1.0,
        transformer=dict(
            type='CoDeformableDetrTransformer',
            mixed_selection=True,
            head_pos_embed='scalar',  # released quirk; 'vector' = 256-d
            encoder=dict(
                num_layers=6,
                layer_cfg=dict(
                    self_attn_cfg=dict(
                        embed_dims=256,
                        num_heads=8,
                        num_levels=4,
                        num_points=4,
                        dropout=0.0,
                        batch_first=True),
                    ffn_cfg=dict(
                        embed_dims=256,
                        feedforward_channels=2048,
                        ffn_drop=0.0))),
            decoder=dict(
                # the auxiliary loss weights scale with it
                num_layers=_base_.num_dec_layer,
                return_intermediate=True,
                look_forward_twice=True,
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
                        num_levels=4,
                        num_points=4,
                        dropout=0.0,
                        batch_first=True),
                    ffn_cfg=dict(
                        embed_dims=256,
                        feedforward_channels=2048,
                        ffn_drop=0.0)))),
        positional_encoding=dict(
            num_feats=128, normalize=True, offset=-0.5, temperature=10000),
        # mmdet's FocalLoss by its PyTorch formula on every device (mmcv's
        # CUDA kernel reads the labels back)
        loss_cls=dict(
            type='SyncFreeFocalLoss',
            use_sigmoid=True,
            gamma=2.0,
            alpha=0.25,
            loss_weight=2.0),
        # mmdet's L1Loss without its host-side test for positive weights
        loss_bbox=dict(type='SyncFreeL1Loss', loss_weight=5.0),
        # mmdet's GIoULoss with its gradient in closed form (same values)
        loss_iou=dict(type='AnalyticGIoULoss', loss_weight=2.0),
        train_cfg=dict(
            assigner=dict(
                type='HungarianAssigner',
                match_costs=[
                    dict(type='FocalLossCost', weight=2.0),
                    # mmdet's BBoxL1Cost and IoUCost without host copies
                    dict(
                        type='SyncFreeBBoxL1Cost',
                        weight=5.0,
                        box_format='xywh'),
                    dict(type='SyncFreeIoUCost', iou_mode='giou', weight=2.0)
                ])),
        test_cfg=dict(max_per_img=100)),
    # The auxiliary heads run on the 4 encoder levels (strides 8-64); the RPN
    # and ATSS add a stride-128 level.
    rpn_head=dict(anchor_generator=dict(strides=[8, 16, 32, 64, 128])),
    roi_head=dict(
        rcnn=dict(
            bbox_roi_extractor=dict(
                featmap_strides=[8, 16, 32, 64], finest_scale=112))),
    bbox_head=dict(
        atss=dict(anchor_generator=dict(strides=[8, 16, 32, 64, 128]))))
