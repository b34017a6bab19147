# Co-DINO 5-scale Swin-L with LSJ at 1280 px, 24 epochs on COCO 2017
# (published: 60.4 box AP, Sense-X/Co-DETR README). Released config:
# co_dino/co_dino_5scale_lsj_swin_large_2x_coco.py: the 1x recipe with more
# stochastic depth and the learning-rate step at epoch 20 of 24.
_base_ = './co_dino_5scale_swin_large_lsj_1x_coco.py'

model = dict(backbone=dict(drop_path_rate=0.5))

max_epochs = 24
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(_base_.param_scheduler[0], end=max_epochs, milestones=[20])
]
