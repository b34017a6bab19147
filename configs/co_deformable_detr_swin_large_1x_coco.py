# Co-Deformable-DETR Swin-L, 12 epochs on COCO 2017 (published: 56.9 box AP,
# Sense-X/Co-DETR README). Released config: co_deformable_detr/
# co_deformable_detr_swin_large_1x_coco.py. ImageNet-22k weights at 384 px,
# window 12.
_base_ = './co_deformable_detr_swin_base_1x_coco.py'

pretrained = ('https://github.com/SwinTransformer/storage/releases/download/'
              'v1.0.0/swin_large_patch4_window12_384_22k.pth')
embed_dims = 192
model = dict(
    backbone=dict(
        embed_dims=embed_dims,
        num_heads=[6, 12, 24, 48],
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[embed_dims * 2, embed_dims * 4, embed_dims * 8]))
