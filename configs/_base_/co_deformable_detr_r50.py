# Co-Deformable-DETR, ResNet-50, two auxiliary heads (Faster R-CNN + ATSS):
# the model only (spec section 1). Experiment configs inherit this file.
#
# Auxiliary heads are named entries of `roi_head` / `bbox_head`: add one with
# `model = dict(bbox_head=dict(fcos=dict(type='CoFCOSHead', ...)))`, drop one
# with `model = dict(roi_head=None, rpn_head=None)`; num_co_heads and the
# loss-key numbering follow from the heads present.
num_dec_layer = 6
lambda_2 = 2.0
aux_weight = num_dec_layer * lambda_2  # every auxiliary loss weight x12

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
                num_layers=num_dec_layer,
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
        loss_cls=dict(
            type='FocalLoss',
            use_sigmoid=True,
            gamma=2.0,
            alpha=0.25,
            loss_weight=2.0),
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
        test_cfg=dict(max_per_img=100)),
    rpn_head=dict(
        type='CoRPNHead',  # mmdet's, losses over all levels at once
        in_channels=256,
        feat_channels=256,
        anchor_generator=dict(
            # mmdet's, each level's anchors computed once (issue 13)
            type='CachedAnchorGenerator',
            octave_base_scale=4,
            scales_per_octave=3,
            ratios=[0.5, 1.0, 2.0],
            strides=[8, 16, 32, 64, 128]),
        bbox_coder=dict(
            type='DeltaXYWHBBoxCoder',
            target_means=[0.0, 0.0, 0.0, 0.0],
            target_stds=[1.0, 1.0, 1.0, 1.0]),
        loss_cls=dict(
            type='CrossEntropyLoss',
            use_sigmoid=True,
            loss_weight=1.0 * aux_weight),
        loss_bbox=dict(type='L1Loss', loss_weight=1.0 * aux_weight),
        train_cfg=dict(
            # mmdet's MaxIoUAssigner, same assignment, no device reads
            assigner=dict(
                type='SyncFreeMaxIoUAssigner',
                pos_iou_thr=0.7,
                neg_iou_thr=0.3,
                min_pos_iou=0.3,
                match_low_quality=True,
                ignore_iof_thr=-1),
            sampler=dict(
                type='RandomSampler',
                num=256,
                pos_fraction=0.5,
                neg_pos_ub=-1,
                add_gt_as_proposals=False),
            allowed_border=-1,
            pos_weight=-1,
            debug=False),
        # Proposals handed to the RoI heads during training.
        proposal_cfg=dict(
            nms_pre=4000,
            max_per_img=1000,
            nms=dict(type='nms', iou_threshold=0.7),
            min_bbox_size=0),
        test_cfg=dict(
            nms_pre=1000,
            max_per_img=1000,
            nms=dict(type='nms', iou_threshold=0.7),
            min_bbox_size=0)),
    roi_head=dict(
        rcnn=dict(
            type='CoStandardRoIHead',
            bbox_roi_extractor=dict(
                type='SingleRoIExtractor',
                roi_layer=dict(
                    type='RoIAlign', output_size=7, sampling_ratio=0),
                out_channels=256,
                featmap_strides=[8, 16, 32, 64],
                finest_scale=112),
            bbox_head=dict(
                type='Shared2FCBBoxHead',
                in_channels=256,
                fc_out_channels=1024,
                roi_feat_size=7,
                bbox_coder=dict(
                    type='DeltaXYWHBBoxCoder',
                    target_means=[0.0, 0.0, 0.0, 0.0],
                    target_stds=[0.1, 0.1, 0.2, 0.2]),
                reg_class_agnostic=False,
                reg_decoded_bbox=True,
                loss_cls=dict(
                    type='CrossEntropyLoss',
                    use_sigmoid=False,
                    loss_weight=1.0 * aux_weight),
                loss_bbox=dict(type='GIoULoss',
                               loss_weight=10.0 * aux_weight)),
            train_cfg=dict(
                # mmdet's MaxIoUAssigner, same assignment, no device reads
                assigner=dict(
                    type='SyncFreeMaxIoUAssigner',
                    pos_iou_thr=0.5,
                    neg_iou_thr=0.5,
                    min_pos_iou=0.5,
                    match_low_quality=False,
                    ignore_iof_thr=-1),
                sampler=dict(
                    type='RandomSampler',
                    num=512,
                    pos_fraction=0.25,
                    neg_pos_ub=-1,
                    add_gt_as_proposals=True),
                pos_weight=-1,
                debug=False),
            test_cfg=dict(
                score_thr=0.0,
                nms=dict(type='nms', iou_threshold=0.5),
                max_per_img=100))),
    bbox_head=dict(
        atss=dict(
            type='CoATSSHead',
            in_channels=256,
            stacked_convs=1,
            feat_channels=256,
            anchor_generator=dict(
                # mmdet's, each level's anchors computed once (issue 13)
                type='CachedAnchorGenerator',
                ratios=[1.0],
                octave_base_scale=8,
                scales_per_octave=1,
                strides=[8, 16, 32, 64, 128]),
            bbox_coder=dict(
                type='DeltaXYWHBBoxCoder',
                target_means=[0.0, 0.0, 0.0, 0.0],
                target_stds=[0.1, 0.1, 0.2, 0.2]),
            reg_decoded_bbox=True,
            loss_cls=dict(
                type='FocalLoss',
                use_sigmoid=True,
                gamma=2.0,
                alpha=0.25,
                loss_weight=1.0 * aux_weight),
            loss_bbox=dict(type='GIoULoss', loss_weight=2.0 * aux_weight),
            loss_centerness=dict(
                type='CrossEntropyLoss',
                use_sigmoid=True,
                loss_weight=1.0 * aux_weight),
            train_cfg=dict(
                assigner=dict(type='ATSSAssigner', topk=9),
                allowed_border=-1,
                pos_weight=-1,
                debug=False),
            test_cfg=dict(
                nms_pre=1000,
                # no min_bbox_size: mmdet 2.x dense heads ignored it (only its
                # RPN applied it), so the released test keeps the boxes that
                # clipping to the image makes empty; mmdet 3.x would drop them.
                score_thr=0.0,
                nms=dict(type='nms', iou_threshold=0.6),
                max_per_img=100))))
