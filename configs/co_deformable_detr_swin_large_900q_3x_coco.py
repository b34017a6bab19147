# Co-Deformable-DETR Swin-L with 900 queries, 36 epochs on COCO 2017
# (published: 58.5 box AP, Sense-X/Co-DETR README). Released config:
# co_deformable_detr/co_deformable_detr_swin_large_900q_3x_coco.py: the 1x
# Swin-L recipe with 900 queries (300 kept per image at test time), more
# stochastic depth and the learning-rate step at epoch 30 of 36.
_base_ = './co_deformable_detr_swin_large_1x_coco.py'

model = dict(
    backbone=dict(drop_path_rate=0.6),
    query_head=dict(num_query=900, test_cfg=dict(max_per_img=300)))

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(_base_.param_scheduler[0], end=max_epochs, milestones=[30])
]
