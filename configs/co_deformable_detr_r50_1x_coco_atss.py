# Co-Deformable-DETR R50 1x COCO with one auxiliary head, ATSS (K = 1;
# published: 48.7 box AP). Faster R-CNN (RPN + RoI head) is dropped.
_base_ = './co_deformable_detr_r50_1x_coco.py'

model = dict(rpn_head=None, roi_head=None)
