# DAB-Deformable-DETR R50, 50 epochs on COCO 2017 (published by
# IDEA-Research/DAB-DETR: 48.7 box AP): no auxiliary heads (K = 0). The
# official recipe: AdamW at lr 1e-4 for 16 images per step (8 GPUs x 2),
# weight decay 1e-4, gradients clipped at norm 0.1, the backbone at lr x0.1,
# the learning rate x0.1 after epoch 40.
_base_ = [
    './_base_/co_dab_deformable_detr_r50.py', './_base_/coco_detection.py',
    './_base_/schedules/co_detr_1x.py', './_base_/default_runtime.py'
]

model = dict(rpn_head=None, roi_head=None, bbox_head=None)

optim_wrapper = dict(optimizer=dict(lr=1e-4))
max_epochs = 50
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(_base_.param_scheduler[0], end=max_epochs, milestones=[40])
]
