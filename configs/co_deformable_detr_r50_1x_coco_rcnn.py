# Co-Deformable-DETR R50 1x COCO with one auxiliary head, Faster R-CNN
# (RPN + RoI head, K = 1). ATSS is dropped; 'one-stage' evaluation is not
# available, 'two-stage' evaluates the RoI head.
_base_ = './co_deformable_detr_r50_1x_coco.py'

model = dict(bbox_head=None)
