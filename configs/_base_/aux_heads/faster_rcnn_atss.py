# The paper's default auxiliary heads (K = 2): Faster R-CNN (RPN + RoI head)
# and ATSS, as named entries of `model.rpn_head`, `model.roi_head` and
# `model.bbox_head`. The model bases (../co_deformable_detr_r50.py,
# ../co_dino_5scale_r50.py) inherit this file and add the feature pyramid
# these heads run on: the anchor strides of the RPN and ATSS, and the RoI
# extractor's `featmap_strides` and `finest_scale`.
#
# Experiment configs add a head with
# `model = dict(bbox_head=dict(fcos=dict(type='CoFCOSHead', ...)))` and drop
# one with `model = dict(roi_head=None, rpn_head=None)`; num_co_heads and the
# loss-key numbering follow from the heads present.

# Every auxiliary loss is the head's standalone loss weighted by lambda_2 per
# decoder layer whose queries it supervises: x12.
num_dec_layer = 6
lambda_2 = 2.0
aux_weight = num_dec_layer * lambda_2

model = dict(
    rpn_head=dict(
        type='CoRPNHead',  # mmdet's, losses over all levels at once
        in_channels=256,
        feat_channels=256,
        anchor_generator=dict(
            # mmdet's, each level's anchors computed once
            type='CachedAnchorGenerator',
            octave_base_scale=4,
            scales_per_octave=3,
            ratios=[0.5, 1.0, 2.0]),
        bbox_coder=dict(
            type='DeltaXYWHBBoxCoder',
            target_means=[0.0, 0.0, 0.0, 0.0],
            target_stds=[1.0, 1.0, 1.0, 1.0]),
        # mmdet's losses without their host reads (a nonzero in the
        # sigmoid labels' expansion, L1's test for positive weights): the
        # RPN's first read is then its NMS
        loss_cls=dict(
            type='SyncFreeCrossEntropyLoss',
            use_sigmoid=True,
            loss_weight=1.0 * aux_weight),
        loss_bbox=dict(type='SyncFreeL1Loss', loss_weight=1.0 * aux_weight),
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
            # One NMS call over an image's 4000 boxes per level (5 levels,
            # 6 in Co-DINO): mmcv loops over the levels from `split_thr`
            # (10000) boxes on, with a device read per level. Both paths
            # use the same level-offset boxes, so they keep the same
            # proposals in the same order unless scores are exactly equal,
            # where the sort's order picks the survivor
            # (docs/performance.md, the RPN's training NMS).
            nms=dict(type='nms', iou_threshold=0.7, split_thr=100000),
            min_bbox_size=0),
        test_cfg=dict(
            nms_pre=1000,
            max_per_img=1000,
            nms=dict(type='nms', iou_threshold=0.7),
            min_bbox_size=0)),
    roi_head=dict(
        rcnn=dict(
            type='CoStandardRoIHead',
            # mmdet's SingleRoIExtractor, one device read instead of one
            # per level
            bbox_roi_extractor=dict(
                type='LevelSortedRoIExtractor',
                roi_layer=dict(
                    type='RoIAlign', output_size=7, sampling_ratio=0),
                out_channels=256),
            # mmdet's Shared2FCBBoxHead, losses without device reads
            bbox_head=dict(
                type='SyncFreeShared2FCBBoxHead',
                in_channels=256,
                fc_out_channels=1024,
                roi_feat_size=7,
                # mmdet's DeltaXYWHBBoxCoder, its decode without copies
                # from the host
                bbox_coder=dict(
                    type='SyncFreeDeltaXYWHBBoxCoder',
                    target_means=[0.0, 0.0, 0.0, 0.0],
                    target_stds=[0.1, 0.1, 0.2, 0.2]),
                reg_class_agnostic=False,
                reg_decoded_bbox=True,
                loss_cls=dict(
                    type='CrossEntropyLoss',
                    use_sigmoid=False,
                    loss_weight=1.0 * aux_weight),
                # mmdet's GIoULoss in one autograd node (see the query head)
                loss_bbox=dict(type='AnalyticGIoULoss',
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
                # mmdet's RandomSampler drawing on the device's generator
                sampler=dict(
                    type='DeviceRandomSampler',
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
                # mmdet's, each level's anchors computed once
                type='CachedAnchorGenerator',
                ratios=[1.0],
                octave_base_scale=8,
                scales_per_octave=1),
            bbox_coder=dict(
                type='DeltaXYWHBBoxCoder',
                target_means=[0.0, 0.0, 0.0, 0.0],
                target_stds=[0.1, 0.1, 0.2, 0.2]),
            reg_decoded_bbox=True,
            # mmdet's FocalLoss without mmcv's read of the labels: with it
            # ATSS, run before the RPN, reads nothing back
            loss_cls=dict(
                type='SyncFreeFocalLoss',
                use_sigmoid=True,
                gamma=2.0,
                alpha=0.25,
                loss_weight=1.0 * aux_weight),
            loss_bbox=dict(
                type='AnalyticGIoULoss', loss_weight=2.0 * aux_weight),
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
