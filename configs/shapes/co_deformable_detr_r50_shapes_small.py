# Co-Deformable-DETR R50 on the synthetic shapes dataset, small and short:
# images at about their generated size (short side 256-480 instead of COCO's
# 480-800) and 8 epochs. The model is that of the R50 COCO config apart from
# num_classes; data and schedule are what change.
#
# Data: python tools/generate_shapes_dataset.py --out data/shapes \
#           --num-train 2000 --num-val 200
# Train (1 GPU): python tools/train.py \
#           configs/shapes/co_deformable_detr_r50_shapes_small.py
_base_ = [
    '../_base_/co_deformable_detr_r50.py',
    '../_base_/shapes_detection_small.py',
    '../_base_/schedules/co_detr_1x.py', '../_base_/default_runtime.py'
]

model = dict(num_classes=6)
# as ../co_deformable_detr_r50_1x_coco.py
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={'sampling_offsets': dict(lr_mult=0.1)}))

max_epochs = 8
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(_base_.param_scheduler[0], end=max_epochs, milestones=[7])
]
default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=3))
