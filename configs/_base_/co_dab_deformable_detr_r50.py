# Co-DAB-Deformable-DETR, ResNet-50, with the default auxiliary heads (Faster
# R-CNN + ATSS): the model only. DAB-Deformable-DETR (IDEA-Research/DAB-DETR)
# in Co-Deformable-DETR's frame: the same backbone, neck, encoder, decoder
# layers, branches, matching and auxiliary heads; the transformer's queries
# are learnt anchor boxes whose positional queries the decoder generates
# (docs/design.md, DAB-Deformable-DETR). What differs from the
# Co-Deformable-DETR base is stated below; K = 0 configs drop the auxiliary
# heads.
_base_ = './co_deformable_detr_r50.py'

model = dict(
    # DAB-DETR's input projections are convolutions with a bias before the
    # GroupNorm (mmdet's ChannelMapper drops it by default)
    neck=dict(bias=True),
    query_head=dict(
        transformer=dict(
            _delete_=True,
            type='CoDABDeformableDetrTransformer',
            encoder=_base_.model.query_head.transformer.encoder,
            decoder=dict(
                num_layers=_base_.model.query_head.transformer.decoder
                .num_layers,
                return_intermediate=True,
                post_norm_cfg=None,
                layer_cfg=_base_.model.query_head.transformer.decoder
                .layer_cfg)),
        # DAB-DETR's loss weights: classification x1 (matching cost x2);
        # its GIoU (normalised boxes, +1e-6 to union and enclosing area) and
        # its division by the number of boxes itself (mmdet adds eps)
        loss_cls=dict(loss_weight=1.0),
        loss_iou=dict(_delete_=True, type='NormalizedGIoULoss',
                      loss_weight=2.0),
        avg_factor_eps=0.0))
