# Co-DINO 5-scale R50 with 9 encoder layers and LSJ, 36 epochs on COCO 2017
# (published: 55.4 box AP, Sense-X/Co-DETR README). Released config:
# co_dino/co_dino_5scale_9encoder_lsj_r50_3x_coco.py: the 1x recipe with the
# learning-rate step at epoch 30 of 36.
_base_ = './co_dino_5scale_r50_9encoder_lsj_1x_coco.py'

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(_base_.param_scheduler[0], end=max_epochs, milestones=[30])
]
