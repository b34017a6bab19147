# Co-Deformable-DETR R50 1x COCO without auxiliary heads (K = 0): the
# Deformable-DETR++ baseline of the paper (published: 47.1 box AP). Only the
# query head and its encoder loss train; num_co_heads = 0, so the transformer
# has no auxiliary-query projections.
_base_ = './co_deformable_detr_r50_1x_coco.py'

model = dict(rpn_head=None, roi_head=None, bbox_head=None)
