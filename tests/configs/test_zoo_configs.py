"""Every shipped config builds and trains one step; the model-zoo configs
hold the released values.

The training step runs each config under ``configs/`` (new ones enter by
the glob) shrunk by ``zoo_testing.shrink_model_cfg`` on a tiny image, and
checks the shrink kept what the config is about. The released values
(``RELEASED``) were read from Sense-X/Co-DETR
``projects/configs/co_deformable_detr/*.py`` and ``co_dino/*.py`` and are
checked on the full, unbuilt configs.
"""
import math
import os.path as osp

import pytest
import torch
from codetr_testing import REPO_ROOT, build_model, load_config, make_batch
from zoo_testing import aux_head_types, tiny_zoo_model_cfg, zoo_configs

SWIN = 'SwinTransformer'
_T = dict(embed_dims=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
          window_size=7, neck=[192, 384, 768])
_S = dict(_T, depths=[2, 2, 18, 2])
_B = dict(embed_dims=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32],
          window_size=12, neck=[256, 512, 1024])
_L = dict(embed_dims=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48],
          window_size=12, neck=[384, 768, 1536])
_1X = dict(max_epochs=12, milestones=[11])
_2X = dict(max_epochs=24, milestones=[20])
_3X = dict(max_epochs=36, milestones=[30])
_CDD = 'configs/co_deformable_detr_'
_DINO = 'configs/co_dino_5scale_'
# Co-DINO: the released defaults, and Swin-L's 4 outputs, 16 GPUs x 1 image.
_D = dict(num_query=900, max_per_img=300, weight_decay=1e-4,
          out_indices=(0, 1, 2, 3), dino=True)
_DL = dict(_D, **_L, batch_size=1, num_cp=6)
_DL['neck'] = [192] + _L['neck']
_LSJ = dict(image_size=(1024, 1024))
# config -> released values: backbone (Swin only), drop-path rate, queries,
# encoder depth, schedule, weight decay, test-time detections per image,
# images per GPU, LSJ size. Omitted: as DEFAULTS.
RELEASED = {
    _CDD + 'r50_1x_coco.py': dict(num_query=300, weight_decay=1e-4, **_1X),
    _CDD + 'swin_tiny_1x_coco.py': dict(_T, drop_path_rate=0.2, **_1X),
    _CDD + 'swin_tiny_3x_coco.py': dict(_T, drop_path_rate=0.3, **_3X),
    _CDD + 'swin_small_1x_coco.py': dict(_S, drop_path_rate=0.2, **_1X),
    _CDD + 'swin_small_3x_coco.py': dict(_S, drop_path_rate=0.4, **_3X),
    _CDD + 'swin_base_1x_coco.py': dict(_B, drop_path_rate=0.2, **_1X),
    _CDD + 'swin_base_3x_coco.py': dict(_B, drop_path_rate=0.4, **_3X),
    _CDD + 'swin_large_1x_coco.py': dict(_L, drop_path_rate=0.3, **_1X),
    _CDD + 'swin_large_900q_3x_coco.py':
    dict(_L, drop_path_rate=0.6, num_query=900, max_per_img=300, **_3X),
    _DINO + 'r50_1x_coco.py': dict(_D, num_cp=4, **_1X),
    _DINO + 'r50_lsj_1x_coco.py': dict(_D, num_cp=4, **_LSJ, **_1X),
    _DINO + 'r50_lsj_3x_coco.py': dict(_D, num_cp=4, **_LSJ, **_3X),
    _DINO + 'r50_9encoder_lsj_1x_coco.py':
    dict(_D, enc_layers=9, num_cp=9, **_LSJ, **_1X),
    _DINO + 'r50_9encoder_lsj_3x_coco.py':
    dict(_D, enc_layers=9, num_cp=9, **_LSJ, **_3X),
    _DINO + 'swin_large_1x_coco.py': dict(_DL, drop_path_rate=0.3, **_1X),
    _DINO + 'swin_large_2x_coco.py': dict(_DL, drop_path_rate=0.5, **_2X),
    _DINO + 'swin_large_3x_coco.py': dict(_DL, drop_path_rate=0.6, **_3X),
    _DINO + 'swin_large_lsj_1x_coco.py':
    dict(_DL, drop_path_rate=0.3, image_size=(1280, 1280), **_1X),
    _DINO + 'swin_large_lsj_2x_coco.py':
    dict(_DL, drop_path_rate=0.5, image_size=(1280, 1280), **_2X),
    # 0.5 as released (the DETR-augmented 3x has 0.6)
    _DINO + 'swin_large_lsj_3x_coco.py':
    dict(_DL, drop_path_rate=0.5, image_size=(1280, 1280), **_3X),
}
# Defaults of the Co-Deformable-DETR recipe where an entry does not say.
DEFAULTS = dict(num_query=300, weight_decay=0.05, max_per_img=100,
                enc_layers=6, batch_size=2, out_indices=(1, 2, 3),
                dino=False)
PRETRAINED = {
    96: 'swin_{}_patch4_window7_224.pth',
    128: 'swin_base_patch4_window12_384_22k.pth',
    192: 'swin_large_patch4_window12_384_22k.pth',
}
LSJ_TRAIN = ['RobustLoadImageFromFile', 'LoadAnnotations', 'RandomResize',
             'RandomCrop', 'FilterAnnotations', 'RandomFlip', 'Pad']


@pytest.mark.parametrize('config', zoo_configs())
def test_config_trains_one_step_shrunk(config):
    full = load_config(osp.join(REPO_ROOT, config)).model
    cfg = tiny_zoo_model_cfg(config)
    # the shrink keeps what the config is about
    assert cfg.backbone.type == full.backbone.type
    assert cfg.query_head.type == full.query_head.type
    assert cfg.query_head.transformer.type == full.query_head.transformer.type
    assert aux_head_types(cfg) == aux_head_types(full)
    full_enc = full.query_head.transformer.encoder.num_layers
    if full_enc != 6:
        assert cfg.query_head.transformer.encoder.num_layers == full_enc
    if full.backbone.type == SWIN:
        assert cfg.backbone.out_indices == full.backbone.out_indices
    model = build_model(cfg)
    assert type(model.backbone).__name__ == full.backbone.type
    assert len(model.neck.convs) == len(full.neck.in_channels)
    # one auxiliary query branch per auxiliary head (RPN + RoI count once)
    num_aux = len(aux_head_types(full)) - bool(full.get('rpn_head'))
    if full.get('with_pos_coord', True):
        assert model.query_head.transformer.num_co_heads == num_aux

    model.train()
    inputs, samples = make_batch(
        model, image_sizes=((96, 112), ), num_boxes=(2, ), seed=1)
    losses = model.loss(inputs, samples)
    loss, log_vars = model.parse_losses(losses)
    assert torch.isfinite(loss), config
    bad = {k: v for k, v in log_vars.items() if not math.isfinite(v)}
    assert not bad, f'{config}: non-finite losses {bad}'
    loss.backward()
    grads = [p.grad for p in model.query_head.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_every_zoo_entry_is_shipped():
    shipped = set(zoo_configs())
    missing = [c for c in RELEASED if c not in shipped]
    assert not missing


@pytest.mark.parametrize('config', sorted(RELEASED))
def test_released_values(config):
    want = dict(DEFAULTS, **RELEASED[config])
    cfg = load_config(osp.join(REPO_ROOT, config))
    model = cfg.model
    backbone = model.backbone
    if 'embed_dims' in want:
        assert backbone.type == SWIN
        for key in ('embed_dims', 'depths', 'num_heads', 'window_size',
                    'drop_path_rate'):
            value = backbone[key]
            assert (list(value) if isinstance(value, (list, tuple)) else
                    value) == want[key], key
        assert backbone.mlp_ratio == 4 and backbone.qkv_bias
        assert backbone.patch_norm and not backbone.use_abs_pos_embed
        assert backbone.drop_rate == 0 and backbone.attn_drop_rate == 0
        assert list(model.neck.in_channels) == want['neck']
        # ImageNet weights of the original Swin, converted at load time
        name = PRETRAINED[backbone.embed_dims].format(
            'tiny' if backbone.depths[2] == 6 else 'small')
        assert backbone.init_cfg.checkpoint.endswith('/' + name)
        assert backbone.convert_weights
    else:
        assert backbone.type == 'ResNet' and backbone.depth == 50
    assert tuple(backbone.out_indices) == want['out_indices']
    head = model.query_head
    assert head.type == ('CoDINOHead' if want['dino'] else 'CoDeformDETRHead')
    assert head.num_query == want['num_query']
    assert head.test_cfg.max_per_img == want['max_per_img']
    encoder = head.transformer.encoder
    assert encoder.num_layers == want['enc_layers']
    assert encoder.get('num_cp', -1) == want.get('num_cp', -1)
    assert head.transformer.decoder.num_layers == 6
    assert cfg.train_cfg.max_epochs == want['max_epochs']
    (sched, ) = cfg.param_scheduler
    assert sched.milestones == want['milestones'] and sched.gamma == 0.1
    assert sched.end == want['max_epochs']
    opt = cfg.optim_wrapper
    assert opt.optimizer.type == 'AdamW' and opt.optimizer.lr == 2e-4
    assert opt.optimizer.weight_decay == want['weight_decay']
    assert opt.clip_grad.max_norm == 0.1
    assert opt.paramwise_cfg.custom_keys.backbone.lr_mult == 0.1
    assert cfg.train_dataloader.batch_size == want['batch_size']
    assert cfg.auto_scale_lr.base_batch_size == 16
    _check_data(cfg, want.get('image_size'))


def _check_data(cfg, image_size):
    """DETR augmentation (the base's), or LSJ at ``image_size``."""
    dataset = cfg.train_dataloader.dataset
    test = cfg.test_dataloader.dataset.pipeline
    if image_size is None:
        assert dataset.type == 'CocoDataset'
        assert [t.type for t in dataset.pipeline][2:4] == [
            'RandomFlip', 'RandomChoice'
        ]
        assert [t.scale for t in test if t.type == 'Resize'] == [(1333, 800)]
        return
    assert dataset.type == 'MultiImageMixDataset'
    load = dataset.dataset.pipeline
    assert [t.type for t in load] == LSJ_TRAIN
    assert load[1].with_mask  # Copy-Paste pastes masks
    assert load[2].scale == image_size and load[2].ratio_range == (0.1, 2.0)
    assert load[3].crop_size == image_size and load[3].recompute_bbox
    assert load[6].size == image_size
    assert load[6].pad_val == dict(img=(114, 114, 114))
    assert [t.type for t in dataset.pipeline] == ['CopyPaste', 'PackDetInputs']
    assert dataset.pipeline[0].max_num_pasted == 100
    assert [t.type for t in test][:3] == ['LoadImageFromFile', 'Resize', 'Pad']
    assert test[1].scale == image_size and test[2].size == image_size
    # validation: the test pipeline with the loader that names unreadable
    # images (the test pipeline keeps mmcv's, which mmdet's APIs replace)
    val = cfg.val_dataloader.dataset.pipeline
    assert val[1:] == test[1:]
    assert (val[0].type, val[0].on_error) == ('RobustLoadImageFromFile',
                                              'raise')


def test_lsj_pipelines_build_in_mmdet():
    """Every LSJ transform exists in mmdet 3.3 with these arguments."""
    from mmdet.registry import TRANSFORMS
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = load_config(osp.join(REPO_ROOT, _DINO + 'r50_lsj_1x_coco.py'))
    dataset = cfg.train_dataloader.dataset
    for transform in (*dataset.dataset.pipeline, *dataset.pipeline,
                      *cfg.test_dataloader.dataset.pipeline):
        TRANSFORMS.build(transform)
