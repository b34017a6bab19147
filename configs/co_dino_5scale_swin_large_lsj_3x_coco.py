# Co-DINO 5-scale Swin-L with LSJ at 1280 px, 36 epochs on COCO 2017
# (published: 60.7 box AP, Sense-X/Co-DETR README). Released config:
# co_dino/co_dino_5scale_lsj_swin_large_3x_coco.py: the 2x recipe (stochastic
# depth 0.5; not the DETR-augmented 3x's 0.6) for 36 epochs, with the
# learning-rate step at epoch 30.
_base_ = './co_dino_5scale_swin_large_lsj_2x_coco.py'

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(_base_.param_scheduler[0], end=max_epochs, milestones=[30])
]
