# Co-Deformable-DETR R50 1x COCO with the default auxiliary heads (Faster
# R-CNN + ATSS) supervising the encoder only: their positives are not decoded
# as customised positive queries (no *_aux{k} losses, num_co_heads = 0).
_base_ = './co_deformable_detr_r50_1x_coco.py'

model = dict(with_pos_coord=False)
