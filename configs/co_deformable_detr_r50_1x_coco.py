# Co-Deformable-DETR R50, 12 epochs on COCO 2017 (published: 49.5 box AP).
# 8 GPUs x 2 images; with another total batch size pass --auto-scale-lr.
_base_ = [
    './_base_/co_deformable_detr_r50.py', './_base_/coco_detection.py',
    './_base_/schedules/co_detr_1x.py', './_base_/default_runtime.py'
]

# Released Co-Deformable-DETR: the deformable attention's sampling offsets at
# lr x0.1 too. (Its `reference_points` x0.1 multiplier is dropped: in
# two-stage mode no parameter has that name.)
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={'sampling_offsets': dict(lr_mult=0.1)}))
