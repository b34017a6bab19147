# Co-Deformable-DETR R50 with the COCO 1x recipe (12 epochs, COCO image
# scales) on the synthetic shapes dataset. Only the data and num_classes
# differ from ../co_deformable_detr_r50_1x_coco.py.
#
# Data: python tools/generate_shapes_dataset.py --out data/shapes \
#           --num-train 2000 --num-val 200
# Train (8 GPUs): bash tools/dist_train.sh \
#           configs/shapes/co_deformable_detr_r50_1x_shapes.py 8
_base_ = [
    '../_base_/co_deformable_detr_r50.py', '../_base_/shapes_detection.py',
    '../_base_/schedules/co_detr_1x.py', '../_base_/default_runtime.py'
]

model = dict(num_classes=6)
# as ../co_deformable_detr_r50_1x_coco.py
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={'sampling_offsets': dict(lr_mult=0.1)}))
