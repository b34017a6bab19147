# Co-Deformable-DETR Swin-B, 12 epochs on COCO 2017 (published: 55.5 box AP,
# Sense-X/Co-DETR README). Released config: co_deformable_detr/
# co_deformable_detr_swin_base_1x_coco.py. ImageNet-22k weights at 384 px,
# window 12.
_base_ = './co_deformable_detr_swin_tiny_1x_coco.py'

pretrained = ('https://github.com/SwinTransformer/storage/releases/download/'
              'v1.0.0/swin_base_patch4_window12_384_22k.pth')
embed_dims = 128
model = dict(
    backbone=dict(
        # Only used by an absolute position embedding, which is off; kept
        # to name the resolution of the pre-trained weights.
        pretrain_img_size=384,
        embed_dims=embed_dims,
        depths=[2, 2, 18, 2],
        num_heads=[4, 8, 16, 32],
        window_size=12,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[embed_dims * 2, embed_dims * 4, embed_dims * 8]))
