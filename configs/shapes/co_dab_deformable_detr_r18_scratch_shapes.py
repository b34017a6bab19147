# Co-DAB-Deformable-DETR trained from scratch on the synthetic shapes data:
# the DAB-Deformable-DETR arm of the GPU convergence study (K=2 here, K=0 in
# the *_k0 variant), with the protocol (../_base_/shapes_scratch_study.py)
# and backbone recipe (ResNet-18, BN trained, no pretrained weights) of the
# Co-Deformable-DETR arms (co_deformable_detr_r18_scratch_shapes.py).
#
# The model is ../_base_/co_dab_deformable_detr_r50.py with the ResNet-18
# backbone; the optimizer is DAB-DETR's (only the backbone at lr x0.1).
_base_ = [
    '../_base_/co_dab_deformable_detr_r50.py',
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
