# Co-Deformable-DETR Swin-S, 36 epochs on COCO 2017 (published: 55.3 box AP,
# Sense-X/Co-DETR README). Released config: co_deformable_detr/
# co_deformable_detr_swin_small_3x_coco.py: the 1x recipe with more stochastic
# depth and the learning-rate step at epoch 30 of 36.
_base_ = './co_deformable_detr_swin_small_1x_coco.py'

model = dict(backbone=dict(drop_path_rate=0.4))

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(_base_.param_scheduler[0], end=max_epochs, milestones=[30])
]
