# Co-DAB-Deformable-DETR R50, 12 epochs on COCO 2017: DAB-Deformable-DETR
# trained with Co-DETR's Faster R-CNN + ATSS auxiliary heads and customised
# positive queries, whose boxes become the anchors of the extra query groups.
# Co-DETR's 1x recipe (schedules/co_detr_1x.py). No published figure: the
# paper reports DAB-Deformable-DETR only at other settings.
_base_ = [
    './_base_/co_dab_deformable_detr_r50.py', './_base_/coco_detection.py',
    './_base_/schedules/co_detr_1x.py', './_base_/default_runtime.py'
]
