# Co-DINO, 5 scales, ResNet-50, with the default auxiliary heads (Faster
# R-CNN + ATSS, aux_heads/faster_rcnn_atss.py): the model only (released
# projects/configs/co_dino/co_dino_5scale_r50_1x_coco.py). Experiment
# configs inherit this file and change only what differs, e.g. the encoder
# depth (`model.query_head.transformer.encoder.num_layers`), the backbone
# (`model.backbone`, `model.neck.in_channels`) or the test NMS
# (`model.query_head.test_cfg`).
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
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=False),
        norm_eval=True,
        style='pytorch',
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')),
    neck=dict(
        type='ChannelMapper',
        in_channels=[256, 512, 1024, 2048],
        kernel_size=1,
        out_channels=256,
        act_cfg=None,
        norm_cfg=dict(type='GN', num_groups=32),
        num_outs=5),
    query_head=dict(
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
                # The released config checkpoints 4 encoder layers (memory
                # only; the computation is the same).
                num_cp=4,
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
                # the auxiliary loss weights scale with it
                num_layers=_base_.num_dec_layer,
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
        # mmdet's QualityFocalLoss without its nonzero (a host read)
        loss_cls=dict(
            type='SyncFreeQualityFocalLoss',
            use_sigmoid=True,
            beta=2.0,
            loss_weight=1.0),
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
        # Released: soft-NMS over the top 900 (query, class) pairs, 300 kept.
        test_cfg=dict(
            max_per_img=300, nms=dict(type='soft_nms', iou_threshold=0.8))),
    # The auxiliary pyramid has 6 levels: the 5 encoder levels (strides
    # 4-64) and the query head's stride-2 `downsample` of the last (128).
    # The RoI head pools from the encoder levels only.
    rpn_head=dict(anchor_generator=dict(strides=[4, 8, 16, 32, 64, 128])),
    roi_head=dict(
        rcnn=dict(
            bbox_roi_extractor=dict(
                featmap_strides=[4, 8, 16, 32, 64], finest_scale=56))),
    bbox_head=dict(
        atss=dict(anchor_generator=dict(strides=[4, 8, 16, 32, 64, 128]))))
