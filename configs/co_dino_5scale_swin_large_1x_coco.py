# Co-DINO 5-scale Swin-L, 12 epochs on COCO 2017 with the DETR augmentation
# (published: 58.9 box AP, Sense-X/Co-DETR README). Released config:
# co_dino/co_dino_5scale_swin_large_1x_coco.py: the R50 recipe with a Swin-L
# backbone (4 outputs, strides 4-32) and 1 image per GPU. The released
# config gives no GPU count; mmdet 3.x's port names the recipe 16xb1, i.e.
# the same 16 images per step as R50, hence the same learning rate.
_base_ = './co_dino_5scale_r50_1x_coco.py'

# ImageNet-22k weights at 384 px in the original Swin layout; convert_weights
# renames them (and reorders patch merging) for mmdet's SwinTransformer.
pretrained = ('https://github.com/SwinTransformer/storage/releases/download/'
              'v1.0.0/swin_large_patch4_window12_384_22k.pth')
embed_dims = 192
model = dict(
    backbone=dict(
        _delete_=True,
        type='SwinTransformer',
        # Only used by an absolute position embedding, which is off; names
        # the resolution of the pre-trained weights.
        pretrain_img_size=384,
        embed_dims=embed_dims,
        depths=[2, 2, 18, 2],
        num_heads=[6, 12, 24, 48],
        window_size=12,
        mlp_ratio=4,
        qkv_bias=True,
        qk_scale=None,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.3,
        patch_norm=True,
        use_abs_pos_embed=False,  # the released `ape=False`
        out_indices=(0, 1, 2, 3),
        with_cp=False,
        convert_weights=True,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[
        embed_dims, embed_dims * 2, embed_dims * 4, embed_dims * 8
    ]),
    # Released: 6 encoder layers activation-checkpointed (memory only).
    query_head=dict(transformer=dict(encoder=dict(num_cp=6))))

train_dataloader = dict(batch_size=1, num_workers=1)
