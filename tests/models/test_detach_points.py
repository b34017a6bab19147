"""Detach points (docs/design.md, detach points) between the encoder memory,
the auxiliary
heads and the decoders.

Each detach point listed there is asserted with
autograd: zero gradient where the method detaches, the expected gradient
where it does not. The model, the training graph and the gradient helpers
are in gradient_graph.py; the gradient equalities against per-image
references in test_gradient_paths.py.
"""
import torch
from gradient_graph import assert_close_scaled, grad_norm, grads, total_loss

from projects.codetr.models import PositiveCoords, build_aux_targets

pytest_plugins = ['gradient_graph']  # fixtures: model, batch, train_graph


def test_rpn_proposals_carry_no_gradient_into_roi_head(model, train_graph):
    """docs/design.md, detach points: the RoI head gets 1000 *detached*
    proposals. The RoI
    losses (whose decoded-box GIoU depends on the proposals) send exactly
    zero gradient into the RPN, while the RPN's own losses do reach it."""
    g = train_graph
    assert all(not p.bboxes.requires_grad for p in g.proposals)
    roi_loss = total_loss(g.roi_losses)
    assert total_loss(g.roi_losses, lambda k: 'bbox' in k).item() > 0
    assert grad_norm(roi_loss, [model.rpn_head]) == 0
    assert grad_norm(total_loss(g.rpn_losses), [model.rpn_head]) > 0
    assert grad_norm(roi_loss, [model.roi_head[0].bbox_head]) > 0


def test_positive_coords_carry_no_gradient(model, train_graph):
    """docs/design.md, positive queries: RoI-proposal coordinates and ATSS
    anchors / FCOS
    point boxes are detached (the regressed boxes are not used), so the
    customised-query losses of set k send exactly zero gradient into the
    RPN, the RoI head, the dense heads, the main-query-only modules and
    the other sets' projections; they do reach ``aux_pos_trans[k]``, which
    their coordinates feed."""
    g = train_graph
    head = model.query_head
    transformer = head.transformer
    num_layers = transformer.decoder.num_layers
    assert all(not p.coords.requires_grad for p in g.pos_coords)
    metas = [s.metainfo for s in g.samples]
    for p in g.pos_coords:
        target = build_aux_targets(p, metas, head.num_classes)
        assert not target.coords.requires_grad
        assert not target.bbox_targets.requires_grad
    num_sets = len(g.pos_coords)
    for k in range(num_sets):
        aux_k = total_loss(g.aux, lambda key: key.endswith(f'_aux{k}'))
        others = [
            transformer.aux_pos_trans[j] for j in range(num_sets) if j != k
        ]
        unreached = [
            model.rpn_head, model.roi_head, model.bbox_head,
            head.cls_branches[num_layers], head.reg_branches[num_layers],
            head.query_embedding, transformer.pos_trans_fc,
            transformer.pos_trans_norm, transformer.memory_trans_fc
        ]
        assert grad_norm(aux_k, unreached) == 0, k
        assert grad_norm(aux_k, [transformer.aux_pos_trans[k]]) > 0, k
        assert grad_norm(aux_k, others) == 0, k


def test_positive_feats_carry_aux_query_gradient_to_memory(model, train_graph):
    """docs/design.md, positive queries: ``PositiveCoords.feats`` are not
    detached. The
    gradient of the customised-query losses into the memory splits by the
    chain rule into the decoder's direct use of the memory plus the path
    through the features: g(feats attached) - g(feats detached) must equal
    the vector-Jacobian product of the features with dL/dfeats, and be
    non-zero for every set and both images. dL/dfeats arrives through
    ``pos_feats_trans[k]``, which gets gradient from set k only."""
    g = train_graph
    head, samples = model.query_head, g.samples
    memory = g.outs['memory']
    loss = total_loss(g.aux)
    feats = [p.feats for p in g.pos_coords]
    assert all(f.requires_grad for f in feats)
    d_memory, *d_feats = grads(loss, [memory, *feats])

    detached = [
        PositiveCoords(p.coords, p.labels, p.targets, p.feats.detach(),
                       p.source) for p in g.pos_coords
    ]
    torch.manual_seed(1)  # as train_graph: same query selection
    (d_memory_direct, ) = grads(
        total_loss(head.loss_aux(g.outs, detached, samples)), [memory])
    through_feats = d_memory - d_memory_direct
    expected = 0
    for k, (f, d_f) in enumerate(zip(feats, d_feats)):
        (vjp, ) = torch.autograd.grad(f, memory, d_f, retain_graph=True)
        for img in range(2):
            assert torch.count_nonzero(vjp[img]) > 0, (k, img)
        expected = expected + vjp
    assert_close_scaled(through_feats, expected, 1e-4)

    transformer = head.transformer
    num_sets = len(g.pos_coords)
    for k in range(num_sets):
        aux_k = total_loss(g.aux, lambda key: key.endswith(f'_aux{k}'))
        others = [
            transformer.pos_feats_trans[j] for j in range(num_sets) if j != k
        ]
        assert grad_norm(aux_k, [transformer.pos_feats_trans[k]]) > 0, k
        assert grad_norm(aux_k, others) == 0, k


def test_mixed_selection_reference_points_are_detached(model, train_graph):
    """docs/design.md, detach points and query selection: the top-k encoder
    proposals become the decoder's
    reference boxes and positional queries *detached*; the content
    queries are ``query_embedding``. The decoder losses therefore send
    exactly zero gradient into the proposal scoring (branch L) and the
    proposal projection (``memory_trans``), which get gradient from the
    encoder loss only; the encoder loss does not reach the decoder
    side (``query_embedding``, ``pos_trans``)."""
    g = train_graph
    head = model.query_head
    transformer = head.transformer
    num_layers = transformer.decoder.num_layers
    assert not g.outs['references'][0].requires_grad
    decoder_loss = total_loss(g.main, lambda k: not k.startswith('enc_'))
    enc_loss = total_loss(g.main, lambda k: k.startswith('enc_'))
    encoder_side = {
        'cls_branch_L': head.cls_branches[num_layers],
        'reg_branch_L': head.reg_branches[num_layers],
        'memory_trans_fc': transformer.memory_trans_fc,
        'memory_trans_norm': transformer.memory_trans_norm,
    }
    decoder_side = {
        'query_embedding': head.query_embedding,
        'pos_trans_fc': transformer.pos_trans_fc,
        'pos_trans_norm': transformer.pos_trans_norm,
    }
    for name, module in encoder_side.items():
        assert grad_norm(decoder_loss, [module]) == 0, name
        assert grad_norm(enc_loss, [module]) > 0, name
    for name, module in decoder_side.items():
        assert grad_norm(decoder_loss, [module]) > 0, name
        assert grad_norm(enc_loss, [module]) == 0, name


def test_decoder_sampling_reference_is_detached(model, train_graph):
    """Second half of look-forward-twice (docs/design.md, query selection): the
    refined box of
    layer l is fed to layer l+1's sampling *detached*, so layer l+1's
    hidden state has exactly zero gradient in ``reg_branches[l]`` (it
    does depend on layer l's parameters). The first half (the returned
    reference is not detached: layer l+1's box loss trains
    ``reg_branches[l]``) is test_co_detr.py::test_look_forward_twice."""
    g = train_graph
    head = model.query_head
    hidden = g.outs['hidden_states']
    assert len(hidden) == 2
    w = torch.randn(
        hidden[1].shape, generator=torch.Generator().manual_seed(6))
    out = (hidden[1] * w).sum()
    assert grad_norm(out, [head.reg_branches[0]]) == 0
    assert grad_norm(out, [head.transformer.decoder.layers[0]]) > 0
    # the returned reference of layer 0 does carry reg_branches[0]
    ref = g.outs['references'][1]
    assert grad_norm((ref * w[..., :4]).sum(), [head.reg_branches[0]]) > 0
