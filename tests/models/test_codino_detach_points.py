"""Detach points of the released Co-DINO, asserted with autograd.

The released code (``projects/models/transformer.py``,
``co_dino_head.py``, ``co_deformable_detr_head.py``) detaches:

- the refined box of decoder layer l before it feeds layer l + 1, while the
  returned (non-detached) box is layer l + 1's reference
  (look-forward-twice);
- the top-k encoder proposals (``topk_coords_unact.detach()``) that become
  the initial references, while the selected encoder logits and boxes that
  the encoder loss supervises are not detached;
- the IoU soft targets of QualityFocalLoss (``pos_decode_bbox_pred
  .detach()`` in the main, encoder, denoising and auxiliary losses);
- the auxiliary positive anchors (ATSS anchors, RPN proposals), while the
  auxiliary-query losses reach the encoder memory.

Denoising queries see no matching query (attention mask) and each
auxiliary set is decoded apart from the others.

Forward-value parity (test_codino_parity.py) cannot see any of this. For
every detach point (and mask) the test reruns the forward without it and
asserts that the gradient it blocks appears: ``detaches_removed`` makes
``Tensor.detach`` keep the graph for calls from the named source files,
for one forward pass. The docstrings say what else would make the other
assertions fail.
"""
import contextlib
import os
import sys
from types import SimpleNamespace

import pytest
import torch
from codetr_testing import build_model, make_batch
from gradient_graph import grad_norm, grads, total_loss
from zoo_testing import tiny_zoo_model_cfg

CONFIG = 'configs/co_dino_5scale_r50_1x_coco.py'
DINO_DECODER = 'codetr/models/transformers/co_dino_decoder.py'
QUERY_SELECTION = 'codetr/models/transformers/co_dino_transformer.py'
# where the proposals and ATSS anchors are detached: mmdet's per-image
# proposals, the batched ones (``CoRPNHead(batched_images=True)``) and the
# auxiliary heads
PROPOSALS = ('mmdet/models/utils/misc.py',
             'codetr/models/task_modules/batched_proposals.py',
             'codetr/models/aux_heads/')
IOU_TARGETS = ('mmdet/models/dense_heads/detr_head.py',
               'mmdet/models/dense_heads/dino_head.py',
               'codetr/models/query_heads/batched_detr_loss.py')


@contextlib.contextmanager
def detaches_removed(*path_parts: str):
    """``Tensor.detach`` returns a view that keeps the graph when it is
    called from a file whose path contains one of ``path_parts``.

    Yields:
        list: The callers whose detach was removed (one entry per call).
    """
    original = torch.Tensor.detach
    removed = []

    def detach(self):
        caller = sys._getframe(1).f_code.co_filename.replace(os.sep, '/')
        if any(part in caller for part in path_parts):
            removed.append(caller)
            return self.view_as(self)
        return original(self)

    torch.Tensor.detach = detach
    try:
        yield removed
    finally:
        torch.Tensor.detach = original


def training_graph(model, batch, aux: bool = True) -> SimpleNamespace:
    """One training forward, step by step as ``CoDETR.loss``."""
    inputs, samples = batch
    head = model.query_head
    torch.manual_seed(0)
    x = model.extract_feat(inputs)
    outs = head.forward_transformer(x, samples)
    graph = SimpleNamespace(
        samples=samples,
        outs=outs,
        main=head.loss_by_outputs(outs, samples))
    if aux:
        pyramid = head.memory_to_pyramid(outs['memory'], x)
        torch.manual_seed(1)
        graph.head_losses, graph.pos_coords = model.aux_heads_loss(
            pyramid, samples)
        assert [p.source for p in graph.pos_coords] == ['rcnn', 'atss']
        torch.manual_seed(2)
        graph.aux = head.loss_aux(outs, graph.pos_coords, samples)
    return graph


def is_decoder_key(key: str) -> bool:
    """Main and denoising losses of the decoder (not the encoder's)."""
    return not key.startswith('enc_')


def is_matching_key(key: str) -> bool:
    """Decoder losses of the matching queries only."""
    return not key.startswith('enc_') and 'dn_' not in key


def aux_set_loss(aux: dict, k: int) -> torch.Tensor:
    return total_loss(aux, lambda key: key.endswith(f'_aux{k}'))


@pytest.fixture(scope='module')
def model():
    """The Co-DINO R50 config shrunk (1 encoder, 2 decoder layers), with
    small random values in the zero-initialised last regression layers
    (with zero weights there every gradient through a regression branch is
    zero, detached or not)."""
    cfg = tiny_zoo_model_cfg(CONFIG)
    cfg.query_head.transformer.decoder.num_layers = 2
    model = build_model(cfg)
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for branch in model.query_head.reg_branches:
            for p in branch[-1].parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
    return model.train()


@pytest.fixture(scope='module')
def batch(model):
    """Two unpadded images: with padding, the padded tokens (all scored
    alike) can fill the top-k of a random model, and their saturated
    proposals would carry no gradient whether detached or not."""
    return make_batch(model, image_sizes=((96, 128), (96, 128)))


@pytest.fixture(scope='module')
def graph(model, batch):
    return training_graph(model, batch)


def test_next_layer_reference_is_detached(model, batch, graph):
    """Layer l + 1 samples around layer l's refined box detached: its
    hidden state has zero gradient in ``reg_branches[0]`` (but not in
    layer 0). Without the decoder's detach it would have one."""
    head = model.query_head
    hidden = graph.outs['hidden_states']
    assert len(hidden) == 2
    w = torch.randn(hidden[1].shape,
                    generator=torch.Generator().manual_seed(6))
    assert grad_norm((hidden[1] * w).sum(), [head.reg_branches[0]]) == 0
    assert grad_norm((hidden[1] * w).sum(),
                     [head.transformer.decoder.layers[0]]) > 0

    with detaches_removed(DINO_DECODER) as removed:
        mutant = training_graph(model, batch, aux=False)
    assert removed
    out = (mutant.outs['hidden_states'][1] * w).sum()
    assert grad_norm(out, [head.reg_branches[0]]) > 0


def test_look_forward_twice(model, batch, graph, monkeypatch):
    """The reference returned for layer 1 is layer 0's refined box before
    the detach: layer 1's box loss trains ``reg_branches[0]``. With
    detached references it would not."""
    head = model.query_head
    assert graph.outs['references'][1].requires_grad
    last_box = total_loss(graph.main, lambda k: k in ('loss_bbox',
                                                      'loss_iou'))
    assert grad_norm(last_box, [head.reg_branches[0]]) > 0

    forward_decoder = head.transformer.forward_decoder

    def detached_references(*args, **kwargs):
        hidden, refs = forward_decoder(*args, **kwargs)
        return hidden, [r.detach() for r in refs]

    monkeypatch.setattr(head.transformer, 'forward_decoder',
                        detached_references)
    mutant = training_graph(model, batch, aux=False)
    last_box = total_loss(mutant.main, lambda k: k in ('loss_bbox',
                                                       'loss_iou'))
    assert grad_norm(last_box, [head.reg_branches[0]]) == 0


def test_encoder_proposals_are_detached_as_references(model, batch, graph):
    """The top-k proposals become the initial references detached: the
    decoder losses (matching and denoising) send zero gradient into the
    proposal branch and ``memory_trans``; the selected encoder outputs are
    not detached, so the encoder loss trains them."""
    head = model.query_head
    transformer = head.transformer
    num_layers = transformer.decoder.num_layers
    proposal_side = [
        head.reg_branches[num_layers], transformer.memory_trans_fc,
        transformer.memory_trans_norm
    ]
    outs = graph.outs
    assert outs['enc_outputs_class'].requires_grad
    assert outs['enc_outputs_coord'].requires_grad
    initial = outs['references'][0].sum()
    decoder_loss = total_loss(graph.main, is_decoder_key)
    enc_loss = total_loss(graph.main, lambda k: k.startswith('enc_'))
    for module in proposal_side:
        assert grad_norm(initial, [module]) == 0, module
        assert grad_norm(decoder_loss, [module]) == 0, module
        assert grad_norm(enc_loss, [module]) > 0, module
    assert grad_norm(enc_loss, [head.cls_branches[num_layers]]) > 0

    with detaches_removed(QUERY_SELECTION) as removed:
        mutant = training_graph(model, batch, aux=False)
    assert removed
    initial = mutant.outs['references'][0].sum()
    decoder_loss = total_loss(mutant.main, is_decoder_key)
    for module in proposal_side:
        assert grad_norm(initial, [module]) > 0, module
        assert grad_norm(decoder_loss, [module]) > 0, module


def test_denoising_queries_reach_only_denoising_losses(model, batch, graph,
                                                       monkeypatch):
    """The denoising content queries (label embedding) are trained by the
    denoising losses; the attention mask keeps them from the matching
    queries, whose losses send zero gradient into the label embedding.
    Without the mask they would send some."""
    head = model.query_head
    embedding = head.dn_query_generator.label_embedding
    assert graph.outs['dn_meta']['num_denoising_queries'] > 0
    dn_loss = total_loss(graph.main, lambda k: 'dn_' in k)
    matching_loss = total_loss(graph.main, is_matching_key)
    assert grad_norm(dn_loss, [embedding]) > 0
    assert grad_norm(matching_loss, [embedding]) == 0

    forward_decoder = head.transformer.forward_decoder

    def without_mask(*args, **kwargs):
        return forward_decoder(*args, **dict(kwargs, self_attn_mask=None))

    monkeypatch.setattr(head.transformer, 'forward_decoder', without_mask)
    mutant = training_graph(model, batch, aux=False)
    matching_loss = total_loss(mutant.main, is_matching_key)
    assert grad_norm(matching_loss, [embedding]) > 0


def test_positive_anchors_carry_no_gradient(model, batch, graph,
                                            monkeypatch):
    """ATSS anchors and RPN proposals are the auxiliary queries' boxes,
    detached: the losses of set k send zero gradient into the RPN, the
    auxiliary heads, the proposal branch, the matching-query embedding,
    the label embedding and the other set's projection; they train
    ``aux_pos_trans[k]``. Without the proposal detaches the RoI set's
    losses would reach the RPN; decoded together without the block mask,
    the sets would reach each other's projections."""
    head = model.query_head
    transformer = head.transformer
    num_layers = transformer.decoder.num_layers
    assert all(not p.coords.requires_grad for p in graph.pos_coords)
    unreached = [
        model.rpn_head, model.roi_head, model.bbox_head,
        head.cls_branches[num_layers], head.reg_branches[num_layers],
        transformer.memory_trans_fc, transformer.query_embedding,
        head.dn_query_generator.label_embedding
    ]
    for k in range(2):
        loss = aux_set_loss(graph.aux, k)
        assert grad_norm(loss, unreached) == 0, k
        assert grad_norm(loss, [transformer.aux_pos_trans[k]]) > 0, k
        assert grad_norm(loss, [transformer.aux_pos_trans[1 - k]]) == 0, k

    with detaches_removed(*PROPOSALS) as removed:
        mutant = training_graph(model, batch)
    assert removed
    assert mutant.pos_coords[0].coords.requires_grad
    assert grad_norm(aux_set_loss(mutant.aux, 0), [model.rpn_head]) > 0

    monkeypatch.setattr(transformer, 'block_diagonal_mask',
                        lambda sizes, device: None)
    torch.manual_seed(2)
    together = head.loss_aux(graph.outs, graph.pos_coords, graph.samples)
    assert grad_norm(aux_set_loss(together, 0),
                     [transformer.aux_pos_trans[1]]) > 0


def test_aux_query_losses_reach_encoder_memory(model, graph):
    """The auxiliary queries cross-attend the encoder memory, not
    detached: their losses reach every image's memory and the encoder,
    neck and backbone. Co-DINO's auxiliary queries have no feature term
    (released ``with_coord_feat=False``): the positives' features get no
    gradient from them. With a detached memory the encoder would get
    none."""
    head = model.query_head
    memory = graph.outs['memory']
    aux_loss = total_loss(graph.aux)
    (d_memory, ) = grads(aux_loss, [memory])
    for img in range(memory.size(0)):
        assert torch.count_nonzero(d_memory[img]) > 0, img
    for module in (head.transformer.encoder, model.neck, model.backbone):
        assert grad_norm(aux_loss, [module]) > 0, module
    for p in graph.pos_coords:
        assert p.feats.requires_grad
        (d_feats, ) = grads(aux_loss, [p.feats])
        assert torch.count_nonzero(d_feats) == 0, p.source

    torch.manual_seed(2)
    detached = head.loss_aux(
        dict(graph.outs, memory=memory.detach()), graph.pos_coords,
        graph.samples)
    assert grad_norm(total_loss(detached), [head.transformer.encoder]) == 0


def test_iou_soft_targets_are_detached(model, batch, graph):
    """QualityFocalLoss targets are the IoU of the *detached* predicted
    boxes: a classification loss sends zero gradient into the regression
    branch that predicted the boxes of its layer (the main and denoising
    losses of the last layer, the encoder loss, the auxiliary losses).
    Without the detaches it would send some."""
    head = model.query_head
    num_layers = head.transformer.decoder.num_layers
    last = head.reg_branches[num_layers - 1]
    enc_branch = head.reg_branches[num_layers]

    def cls_losses(g):
        return [(g.main['loss_cls'], last), (g.main['dn_loss_cls'], last),
                (g.main['enc_loss_cls'], enc_branch),
                (g.aux['loss_cls_aux0'], last),
                (g.aux['loss_cls_aux1'], last)]

    for i, (loss, branch) in enumerate(cls_losses(graph)):
        assert loss.item() > 0, i
        assert grad_norm(loss, [branch]) == 0, i

    with detaches_removed(*IOU_TARGETS) as removed:
        mutant = training_graph(model, batch)
    assert removed
    for i, (loss, branch) in enumerate(cls_losses(mutant)):
        assert grad_norm(loss, [branch]) > 0, i
