# Co-DINO 5-scale R50 1x COCO without auxiliary heads (K = 0): plain DINO
# with the same schedule. Only the query head with its encoder and
# denoising losses trains; num_co_heads = 0, so the transformer has no
# auxiliary-query projections and the head no downsample.
_base_ = './co_dino_5scale_r50_1x_coco.py'

model = dict(rpn_head=None, roi_head=None, bbox_head=None)
