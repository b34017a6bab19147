# Co-Deformable-DETR trained from scratch on the synthetic shapes data: the
# GPU convergence study (K=2 here, K=0 in the *_k0 variant, same schedule and
# seed; the protocol is ../_base_/shapes_scratch_study.py) and the GPU branch
# of the quickstart.
#
# No pretrained weights can be loaded offline, so the backbone is a
# ResNet-18 whose BatchNorm trains (a frozen BN with untrained statistics and
# zero-initialised residual scales would switch the residual branches off).
# Apart from that, data and schedule, the model and optimizer are those of
# the R50 COCO config.
_base_ = [
    '../_base_/co_deformable_detr_r50.py',
    '../_base_/shapes_scratch_study.py'
]

model = dict(
    num_classes=6,
    backbone=dict(
        depth=18,
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        init_cfg=None),
    neck=dict(in_channels=[128, 256, 512]))
# as ../co_deformable_detr_r50_1x_coco.py
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={'sampling_offsets': dict(lr_mult=0.1)}))
