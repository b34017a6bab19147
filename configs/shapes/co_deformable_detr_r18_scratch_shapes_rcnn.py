# K=1, Faster R-CNN only (RPN + RoI head; ATSS dropped), with the same data,
# schedule and seed as co_deformable_detr_r18_scratch_shapes.py.
_base_ = './co_deformable_detr_r18_scratch_shapes.py'

model = dict(bbox_head=None)
