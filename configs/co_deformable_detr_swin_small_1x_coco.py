# Co-Deformable-DETR Swin-S, 12 epochs on COCO 2017 (published: 53.4 box AP,
# Sense-X/Co-DETR README). Released config: co_deformable_detr/
# co_deformable_detr_swin_small_1x_coco.py. Swin-T with 18 blocks in stage 3.
_base_ = './co_deformable_detr_swin_tiny_1x_coco.py'

pretrained = ('https://github.com/SwinTransformer/storage/releases/download/'
              'v1.0.0/swin_small_patch4_window7_224.pth')
model = dict(
    backbone=dict(
        depths=[2, 2, 18, 2],
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
