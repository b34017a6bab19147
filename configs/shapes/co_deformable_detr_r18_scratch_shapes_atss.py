# K=1, ATSS only (Faster R-CNN's RPN and RoI head dropped), with the same data,
# schedule and seed as co_deformable_detr_r18_scratch_shapes.py.
_base_ = './co_deformable_detr_r18_scratch_shapes.py'

model = dict(rpn_head=None, roi_head=None)
