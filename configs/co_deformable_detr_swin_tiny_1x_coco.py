# Co-Deformable-DETR Swin-T, 12 epochs on COCO 2017 (published: 51.7 box AP,
# Sense-X/Co-DETR README). Released config: co_deformable_detr/
# co_deformable_detr_swin_tiny_1x_coco.py. Only the backbone, the neck's input
# widths and the weight decay differ from the R50 recipe.
_base_ = './co_deformable_detr_r50_1x_coco.py'

# ImageNet-1k weights in the original Swin layout; convert_weights renames
# them (and reorders the patch-merging tensors) for mmdet's SwinTransformer.
pretrained = ('https://github.com/SwinTransformer/storage/releases/download/'
              'v1.0.0/swin_tiny_patch4_window7_224.pth')
embed_dims = 96
model = dict(
    backbone=dict(
        _delete_=True,
        type='SwinTransformer',
        embed_dims=embed_dims,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        mlp_ratio=4,
        qkv_bias=True,
        qk_scale=None,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.2,
        patch_norm=True,
        use_abs_pos_embed=False,  # the released `ape=False`
        out_indices=(1, 2, 3),
        with_cp=False,
        convert_weights=True,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[embed_dims * 2, embed_dims * 4, embed_dims * 8]))

optim_wrapper = dict(optimizer=dict(weight_decay=0.05))
