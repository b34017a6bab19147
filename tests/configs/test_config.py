"""The shipped R50 config holds the paper's and the released values, every
shipped config declares what a training run uses, and the detector's config
handling (one num_classes, derived num_co_heads, released list layout)
behaves."""
import copy
import os.path as osp

import pytest
from codetr_testing import REPO_ROOT, build_model, load_config, tiny_model_cfg
from mmengine.config import Config
from zoo_testing import zoo_configs

from projects.codetr.engine.run_config import add_missing_safeguards


@pytest.fixture(scope='module')
def cfg():
    return load_config()


def test_query_head_values(cfg):
    head = cfg.model.query_head
    assert cfg.model.num_classes == 80
    assert head.num_query == 300
    assert head.transformer.mixed_selection
    assert head.transformer.decoder.look_forward_twice
    assert head.transformer.head_pos_embed == 'scalar'
    assert head.loss_cls.loss_weight == 2.0
    assert head.loss_bbox.loss_weight == 5.0
    assert head.loss_iou.loss_weight == 2.0
    assert head.positional_encoding.offset == -0.5


def _walk(node, path=''):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f'{path}.{key}')
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _walk(value, f'{path}[{i}]')
    else:
        yield path, node


def test_all_dropouts_are_zero(cfg):
    drops = {
        path: value
        for path, value in _walk(cfg.model.query_head.transformer)
        if path.rsplit('.', 1)[-1] in ('dropout', 'ffn_drop', 'attn_drop',
                                       'proj_drop')
    }
    assert len(drops) == 6  # enc attn+ffn, dec self(2)+cross+ffn
    assert set(drops.values()) == {0.0}


def test_auxiliary_loss_weights_are_times_twelve(cfg):
    m = cfg.model
    rcnn, atss = m.roi_head.rcnn, m.bbox_head.atss
    assert m.rpn_head.loss_cls.loss_weight == 12
    assert m.rpn_head.loss_bbox.loss_weight == 12
    assert rcnn.bbox_head.loss_cls.loss_weight == 12
    assert rcnn.bbox_head.loss_bbox.loss_weight == 120
    assert atss.loss_cls.loss_weight == 12
    assert atss.loss_bbox.loss_weight == 24
    assert atss.loss_centerness.loss_weight == 12


def test_optimizer_and_schedule(cfg):
    ow = cfg.optim_wrapper
    assert ow.optimizer.type == 'AdamW'
    assert ow.optimizer.lr == 2e-4 and ow.optimizer.weight_decay == 1e-4
    assert ow.clip_grad == dict(max_norm=0.1, norm_type=2)
    assert ow.paramwise_cfg.custom_keys == {
        'backbone': dict(lr_mult=0.1),
        'sampling_offsets': dict(lr_mult=0.1)
    }
    assert cfg.train_cfg.max_epochs == 12 and cfg.train_cfg.val_interval == 1
    (sched, ) = cfg.param_scheduler
    assert sched.type == 'MultiStepLR' and sched.milestones == [11]
    assert sched.gamma == 0.1
    assert cfg.auto_scale_lr.base_batch_size == 16
    assert cfg.default_hooks.checkpoint.interval == 1
    assert cfg.train_dataloader.batch_size == 2
    assert not cfg.train_dataloader.dataset.filter_cfg.filter_empty_gt


def test_full_model_structure(cfg):
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.init_cfg = None
    model = build_model(model_cfg)
    head = model.query_head
    assert len(head.cls_branches) == 7 and len(head.reg_branches) == 7
    assert head.cls_branches[0] is not head.cls_branches[1]
    assert head.cls_branches[0].out_features == 80
    assert head.transformer.num_co_heads == 2
    assert head.transformer.head_pos_embed.weight.shape == (2, 1)
    assert model.roi_head[0].bbox_head.num_classes == 80
    assert model.bbox_head[0].num_classes == 80
    # zero-initialised last regression layers, focal prior on class bias
    assert (head.reg_branches[3][-1].weight == 0).all()
    assert abs(head.cls_branches[2].bias[0].item() + 4.595) < 1e-3
    # the auxiliary heads get mmdet's own init (focal prior, N(0, 0.01))
    assert abs(model.bbox_head[0].atss_cls.bias[0].item() + 4.595) < 1e-3
    fc_cls = model.roi_head[0].bbox_head.fc_cls
    assert fc_cls.weight.std().item() < 0.02 and (fc_cls.bias == 0).all()
    assert model.rpn_head.rpn_cls.weight.std().item() < 0.02


@pytest.mark.parametrize('config', zoo_configs())
def test_config_declares_what_training_uses(config):
    """The random-state and load_from hooks and the image loaders are in
    the config, so tools/train.py adds nothing; the test pipeline keeps
    mmcv's loader, which mmdet's inference APIs look for by type."""
    cfg = load_config(osp.join(REPO_ROOT, config))
    assert [h.type for h in cfg.custom_hooks] == [
        'RNGStateHook', 'LoadFromShapesHook', 'MatmulTF32Hook'
    ]
    assert cfg.tf32 is False  # full float32 matrix products by default
    cfg.load_from = 'some_checkpoint.pth'  # no hook added for it either
    assert cfg.val_dataloader.dataset.pipeline[0].type == \
        'RobustLoadImageFromFile'
    assert cfg.test_dataloader.dataset.pipeline[0].type == 'LoadImageFromFile'
    added = []
    add_missing_safeguards(cfg, log=added.append)
    assert added == []


def test_config_without_safeguards_gets_them_with_log_lines():
    load = [dict(type='LoadImageFromFile')]
    cfg = Config(dict(
        custom_hooks=[dict(type='EMAHook')],
        load_from='some_checkpoint.pth',
        train_dataloader=dict(dataset=dict(pipeline=copy.deepcopy(load))),
        val_dataloader=dict(dataset=dict(pipeline=copy.deepcopy(load))),
        test_dataloader=dict(dataset=dict(pipeline=copy.deepcopy(load)))))
    added = []
    add_missing_safeguards(cfg, log=added.append)
    assert [h.type for h in cfg.custom_hooks] == [
        'EMAHook', 'RNGStateHook', 'LoadFromShapesHook'
    ]
    assert cfg.train_dataloader.dataset.pipeline[0].on_error == 'skip'
    assert cfg.val_dataloader.dataset.pipeline[0].on_error == 'raise'
    # a training run does not build it; tools/test.py switches it
    assert cfg.test_dataloader.dataset.pipeline[0].type == 'LoadImageFromFile'
    assert len(added) == 3
    assert 'RNGStateHook' in added[0] and 'LoadFromShapesHook' in added[1]
    assert '2 LoadImageFromFile' in added[2]


def test_num_classes_set_once_and_mismatch_is_clear():
    cfg = tiny_model_cfg(num_classes=5)
    model = build_model(cfg)
    assert model.query_head.num_classes == 5
    assert model.roi_head[0].bbox_head.num_classes == 5
    assert model.bbox_head[0].num_classes == 5
    cfg.bbox_head.atss.num_classes = 80
    with pytest.raises(ValueError, match='model.num_classes'):
        build_model(cfg)


def test_num_co_heads_is_derived():
    cfg = tiny_model_cfg()
    cfg.query_head.transformer.num_co_heads = 1
    with pytest.raises(ValueError, match='derived from the heads'):
        build_model(cfg)
    cfg = tiny_model_cfg()
    cfg.with_pos_coord = False
    assert build_model(cfg).query_head.num_co_heads == 0


def test_released_list_layout_loads():
    """mmdet 2.x Co-DETR layout: positional train/test cfgs, head lists."""
    cfg = tiny_model_cfg()
    rpn, rcnn, atss = cfg.rpn_head, cfg.roi_head.rcnn, cfg.bbox_head.atss
    train_cfg = [
        cfg.query_head.pop('train_cfg'),
        dict(rpn=rpn.pop('train_cfg'), rpn_proposal=rpn.pop('proposal_cfg'),
             rcnn=rcnn.pop('train_cfg')),
        atss.pop('train_cfg')
    ]
    test_cfg = [
        cfg.query_head.pop('test_cfg'),
        dict(rpn=rpn.pop('test_cfg'), rcnn=rcnn.pop('test_cfg')),
        atss.pop('test_cfg')
    ]
    num_classes = cfg.pop('num_classes')
    for head in (cfg.query_head, rcnn.bbox_head, atss):
        head.num_classes = num_classes
    cfg.roi_head, cfg.bbox_head = [rcnn], [atss]
    cfg.train_cfg, cfg.test_cfg = train_cfg, test_cfg
    model = build_model(cfg)
    assert model.rpn_head.train_cfg.assigner.pos_iou_thr == 0.7
    assert model.rpn_proposal_cfg.nms_pre == 300
    assert model.roi_head[0].train_cfg.sampler.num == 64
    assert model.bbox_head[0].train_cfg.assigner.topk == 9
    assert model.bbox_head[0].test_cfg.nms.iou_threshold == 0.6
    assert model.query_head.test_cfg.max_per_img == 100
    cfg.train_cfg = train_cfg[:2]
    with pytest.raises(ValueError, match='entries'):
        build_model(cfg)
