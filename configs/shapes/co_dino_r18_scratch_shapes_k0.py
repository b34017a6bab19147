# Co-DINO K=0 (no auxiliary head: plain DINO with the Co-DINO recipe), same
# data, schedule and seed as co_dino_r18_scratch_shapes.py.
_base_ = './co_dino_r18_scratch_shapes.py'

model = dict(rpn_head=None, roi_head=None, bbox_head=None)
