# K=2 (Faster R-CNN + ATSS) supervising the encoder only: their positives are
# not decoded as customised positive queries (no *_aux{k} losses). Same data,
# schedule and seed as co_deformable_detr_r18_scratch_shapes.py.
_base_ = './co_deformable_detr_r18_scratch_shapes.py'

model = dict(with_pos_coord=False)
