# DAB-Deformable-DETR K=0 (no auxiliary head), same data, schedule and seed
# as co_dab_deformable_detr_r18_scratch_shapes.py.
_base_ = './co_dab_deformable_detr_r18_scratch_shapes.py'

model = dict(rpn_head=None, roi_head=None, bbox_head=None)
