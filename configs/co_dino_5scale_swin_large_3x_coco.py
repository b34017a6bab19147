# Co-DINO 5-scale Swin-L, 36 epochs on COCO 2017 with the DETR augmentation
# (published: 60.0 box AP, Sense-X/Co-DETR README). Released config:
# co_dino/co_dino_5scale_swin_large_3x_coco.py: the 1x recipe with more
# stochastic depth and the learning-rate step at epoch 30 of 36.
_base_ = './co_dino_5scale_swin_large_1x_coco.py'

model = dict(backbone=dict(drop_path_rate=0.6))

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(_base_.param_scheduler[0], end=max_epochs, milestones=[30])
]
