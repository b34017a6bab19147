"""DAB-Deformable-DETR as a Co-DETR query family (docs/design.md,
DAB-Deformable-DETR): learnt anchor queries, positional queries generated
from the anchors at every layer, detached anchor refinement, and the
auxiliary heads' positives decoded as extra anchor groups.

The values of the whole model are compared with the official code's in
tests/parity/test_dab_parity.py; these tests pin the pieces on a tiny model:
the query generation against mmdet's own ``coordinate_to_encoding`` and
``MLP`` arithmetic written out, the layout the head derives, the detach
points and the one-pass decoding of the positive-query groups.
"""
import pytest
import torch
from codetr_testing import REPO_ROOT, build_model, make_batch, tiny_model_cfg
from mmdet.models.layers import inverse_sigmoid
from mmdet.models.layers.transformer.utils import coordinate_to_encoding

DAB_K0 = f'{REPO_ROOT}/configs/dab_deformable_detr_r50_50e_coco.py'
DAB_K2 = f'{REPO_ROOT}/configs/co_dab_deformable_detr_r50_1x_coco.py'


def tiny(path: str, dec_layers: int = 2):
    cfg = tiny_model_cfg(path, dec_layers=dec_layers)
    cfg.query_head.test_cfg.max_per_img = 20  # 10 queries x 3 classes
    return build_model(cfg)


def capture_layer_inputs(decoder):
    """Record the ``query`` and ``query_pos`` each decoder layer receives."""
    seen = []

    def hook(module, args, kwargs):
        seen.append((args[0] if args else kwargs['query'],
                     kwargs['query_pos'], kwargs['reference_points']))

    handles = [
        layer.register_forward_pre_hook(hook, with_kwargs=True)
        for layer in decoder.layers
    ]
    return seen, handles


def test_k0_layout_has_no_two_stage_parts_and_trains_every_parameter():
    """Without query selection the head has one branch per decoder layer,
    no encoder loss, no mixed-selection embedding and no proposal
    projection; every trainable parameter gets a gradient."""
    model = tiny(DAB_K0).train()
    head = model.query_head
    names = dict(model.named_parameters())
    assert not head.as_two_stage
    assert len(head.cls_branches) == len(head.reg_branches) == 2
    assert not any('memory_trans' in n or 'query_embedding' in n
                   or n.startswith('query_head.downsample') for n in names)
    assert head.transformer.tgt_embed.weight.shape == (10, 256)
    assert head.transformer.refpoint_embed.weight.shape == (10, 4)
    inputs, samples = make_batch(model)
    losses = model.loss(inputs, samples)
    assert sorted(losses) == sorted(
        f'{p}loss_{n}' for p in ('', 'd0.') for n in ('cls', 'bbox', 'iou'))
    model.parse_losses(losses)[0].backward()
    missing = [
        n for n, p in names.items() if p.requires_grad and p.grad is None
    ]
    assert missing == []


def test_head_takes_the_transformer_inverse_sigmoid_eps():
    """DAB-DETR's inverse sigmoid clamps at 1e-3, Deformable DETR's (and
    mmdet's) at 1e-5: the head's box decoding follows the transformer."""
    dab = tiny(DAB_K0).query_head
    co_deform = build_model(tiny_model_cfg()).query_head
    assert dab.ref_eps == dab.transformer.decoder.ref_eps == 1e-3
    assert co_deform.ref_eps == co_deform.transformer.decoder.ref_eps == 1e-5
    hidden = torch.randn(2, 1, 10, 256)
    # a reference at 1e-4 is clamped differently by the two eps
    refs = [torch.full((1, 10, 4), 1e-4)] * 3
    _, boxes = dab(hidden, refs)
    layer = dab.reg_branches[0](hidden[0])
    expected = (layer + inverse_sigmoid(refs[0], eps=1e-3)).sigmoid()
    torch.testing.assert_close(boxes[0], expected, rtol=0, atol=0)


def test_positional_queries_come_from_the_anchors_at_every_layer():
    """Layer 0 gets ref_point_head(sine(anchor x valid ratio of level 0));
    layer l > 0 the same of its refined anchor, times
    query_scale(content). Written out with mmdet's coordinate_to_encoding
    and the MLPs' Linear/ReLU, on a padded batch (valid ratios < 1)."""
    model = tiny(DAB_K0)
    head = model.query_head
    decoder = head.transformer.decoder
    inputs, samples = make_batch(model, training=False)
    seen, handles = capture_layer_inputs(decoder)
    with torch.no_grad():
        outs = head.forward_transformer(model.extract_feat(inputs), samples)
    for h in handles:
        h.remove()
    valid = outs['valid_ratios']
    assert (valid < 1).any()  # the second image is padded

    def mlp(m, x):
        return m.layers[1](torch.relu(m.layers[0](x)))

    anchors = head.transformer.refpoint_embed.weight.sigmoid().expand(
        2, -1, -1)
    torch.testing.assert_close(outs['references'][0], anchors)
    for layer_id, (content, query_pos, ref_input) in enumerate(seen):
        anchors = outs['references'][layer_id]
        scaled = anchors * torch.cat([valid[:, :1], valid[:, :1]], -1)
        torch.testing.assert_close(ref_input[:, :, 0], scaled)
        expected = mlp(decoder.ref_point_head,
                       coordinate_to_encoding(scaled, num_feats=128))
        if layer_id > 0:
            expected = mlp(decoder.query_scale, content) * expected
        torch.testing.assert_close(query_pos, expected)
    # the layer-0 content queries are the learnt ones, for every image
    torch.testing.assert_close(
        seen[0][0], head.transformer.tgt_embed.weight.expand(2, -1, -1))


def test_refined_anchors_are_detached_between_layers():
    """DAB-Deformable-DETR refines the anchors as Deformable DETR does:
    each layer's refined anchor is detached before the next layer and
    before the next layer's prediction (no look-forward-twice)."""
    model = tiny(DAB_K0).train()
    inputs, samples = make_batch(model)
    outs = model.query_head.forward_transformer(
        model.extract_feat(inputs), samples)
    first, *refined = outs['references']
    assert first.requires_grad  # the learnt anchors train
    assert all(not ref.requires_grad for ref in refined)


@pytest.fixture(scope='module')
def k2_model():
    return tiny(DAB_K2)


def test_positive_queries_are_anchor_groups_decoded_as_if_alone(k2_model):
    """Each auxiliary head's positive boxes are the anchors of its query
    group, its features (through that head's projection) the content. All
    groups decoded in one pass equal each group decoded alone."""
    head = k2_model.query_head
    transformer = head.transformer
    inputs, samples = make_batch(k2_model, training=False)
    gen = torch.Generator().manual_seed(3)
    coords = [torch.rand(2, n, 4, generator=gen) * 0.5 + 0.2 for n in (5, 7)]
    feats = [torch.randn(2, n, 256, generator=gen) for n in (5, 7)]
    with torch.no_grad():
        enc = head.encode(k2_model.extract_feat(inputs), samples)
        layout = (enc['memory'], enc['memory_mask'], enc['spatial_shapes'],
                  enc['level_start_index'], enc['valid_ratios'])
        hidden, refs = transformer.forward_aux(coords, feats, *layout,
                                               head.reg_branches)
        torch.testing.assert_close(refs[0], torch.cat(coords, 1))
        start = 0
        for k, (c, f) in enumerate(zip(coords, feats)):
            alone, alone_refs = transformer.forward_decoder(
                transformer.pos_feats_norm[k](transformer.pos_feats_trans[k](
                    f)), c, *layout, head.reg_branches)
            part = slice(start, start + c.size(1))
            torch.testing.assert_close(hidden[:, :, part], alone)
            torch.testing.assert_close(refs[-1][:, part], alone_refs[-1])
            start += c.size(1)


def test_k2_trains_the_positive_query_projections(k2_model):
    """With K=2 the auxiliary-query losses exist for both heads and reach
    each head's content projection."""
    model = k2_model.train()
    inputs, samples = make_batch(model)
    losses = model.loss(inputs, samples)
    for k in (0, 1):
        assert {f'loss_{n}_aux{k}' for n in ('cls', 'bbox', 'iou')} <= set(
            losses)
    model.zero_grad()
    sum(v for key, v in losses.items() if key.endswith('_aux0')).backward()
    transformer = model.query_head.transformer
    assert transformer.pos_feats_trans[0].weight.grad.abs().sum() > 0
    assert transformer.pos_feats_trans[1].weight.grad is None or \
        transformer.pos_feats_trans[1].weight.grad.abs().sum() == 0
    model.eval()


def test_configs_hold_the_official_recipe():
    """dab_deformable_detr_r50_50e_coco.py is IDEA-Research/DAB-DETR's
    published R50 run (main.py defaults and the README's command: 50
    epochs, lr 1e-4 stepped after 40, 300 queries, FFN 2048, no dropout,
    loss weights 1/5/2, matching costs 2/5/2); the Co- config adds the
    auxiliary heads on Co-DETR's 1x recipe."""
    from codetr_testing import load_config
    cfg = load_config(DAB_K0)
    head = cfg.model.query_head
    transformer = head.transformer
    assert transformer.type == 'CoDABDeformableDetrTransformer'
    assert head.num_query == 300 and head.test_cfg.max_per_img == 100
    for coder in (transformer.encoder, transformer.decoder):
        assert coder.num_layers == 6
        assert coder.layer_cfg.ffn_cfg.feedforward_channels == 2048
        assert coder.layer_cfg.ffn_cfg.ffn_drop == 0.0
    assert transformer.decoder.layer_cfg.cross_attn_cfg.num_points == 4
    assert cfg.model.neck.bias is True and cfg.model.neck.num_outs == 4
    assert (head.loss_cls.loss_weight, head.loss_bbox.loss_weight,
            head.loss_iou.loss_weight) == (1.0, 5.0, 2.0)
    assert [c.weight for c in head.train_cfg.assigner.match_costs] == [
        2.0, 5.0, 2.0
    ]
    assert cfg.model.rpn_head is None and cfg.model.bbox_head is None
    opt = cfg.optim_wrapper
    assert (opt.optimizer.type, opt.optimizer.lr,
            opt.optimizer.weight_decay) == ('AdamW', 1e-4, 1e-4)
    assert opt.clip_grad.max_norm == 0.1
    assert opt.paramwise_cfg.custom_keys == {'backbone': {'lr_mult': 0.1}}
    (sched, ) = cfg.param_scheduler
    assert (cfg.train_cfg.max_epochs, sched.milestones) == (50, [40])
    assert cfg.train_dataloader.batch_size == 2
    assert cfg.auto_scale_lr.base_batch_size == 16
    co = load_config(DAB_K2)
    assert co.model.query_head.transformer == transformer
    assert co.model.rpn_head.type == 'CoRPNHead'
    assert co.train_cfg.max_epochs == 12 and co.optim_wrapper.optimizer.lr \
        == 2e-4
