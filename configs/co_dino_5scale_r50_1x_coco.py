# Co-DINO 5-scale R50, 12 epochs on COCO 2017 (published: 52.1 box AP).
# 8 GPUs x 2 images; with another total batch size pass --auto-scale-lr.
# Data pipeline and training recipe as Co-Deformable-DETR's (the released
# configs share them), with only the backbone at lr x0.1.
_base_ = [
    './_base_/co_dino_5scale_r50.py', './_base_/coco_detection.py',
    './_base_/schedules/co_detr_1x.py', './_base_/default_runtime.py'
]
