# K=0 (no auxiliary head, the Deformable-DETR++ baseline) with the same data,
# schedule and seed as co_deformable_detr_r18_scratch_shapes.py.
_base_ = './co_deformable_detr_r18_scratch_shapes.py'

model = dict(rpn_head=None, roi_head=None, bbox_head=None)
