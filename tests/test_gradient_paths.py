"""Gradient paths between the encoder memory and the auxiliary branches.

Property tests (finite losses, every parameter has a gradient) cannot see a
wrong gradient path: the auxiliary pyramid once held strided views of the
encoder memory, mmcv's RoIAlign read them as dense NCHW and pooled the
wrong positions (image 1 read image 0's memory), and every loss stayed
finite. The tests here compare numbers with plain references instead:

- section 1: features, losses and gradients through ``memory_to_pyramid``
  equal those of a per-image, index-based pyramid (spec 2.3, 2.5), and the
  batched auxiliary decoding sends the gradient one pass per set sends
  (spec 3.4);
- section 2: each detach point of the spec (2.2, 2.5, 3.1-3.3, 4.2) is
  asserted with autograd: zero gradient where the spec detaches, the
  expected gradient where it does not.
"""
import math
import os.path as osp
from types import SimpleNamespace
from typing import Callable, Dict, Iterable, List, Sequence, Tuple

import pytest
import torch
from codetr_testing import REPO_ROOT, build_model, make_batch, tiny_model_cfg
from torch import Tensor, nn

from projects.codetr.models import PositiveCoords, build_aux_targets

FCOS_CONFIG = osp.join(REPO_ROOT, 'configs',
                       'co_deformable_detr_r50_1x_coco_k3_fcos.py')
# Fixed RoIs, absolute (x1, y1, x2, y2) in the padded (128, 128) batch: two
# small ones (level 0) and one each for levels 1, 2 and 3 of the extractor
# (finest_scale 112: sqrt(area) >= 224, 448, 896).
ROI_BOXES = (
    ((5., 7., 61., 50.), (20., 10., 120., 90.), (-60., -70., 190., 180.),
     (-170., -160., 300., 310.), (-400., -390., 510., 520.)),
    ((30., 40., 70., 100.), (2., 3., 100., 120.), (-50., -40., 200., 190.),
     (-180., -150., 290., 300.), (-380., -400., 520., 510.)),
)


# --------------------------------------------------------------- helpers
def level_sizes(mlvl_feats: Sequence[Tensor]) -> List[Tuple[int, int]]:
    """(h, w) of each encoder level."""
    return [tuple(feat.shape[-2:]) for feat in mlvl_feats]


def image_levels(memory: Tensor, img: int,
                 sizes: Sequence[Tuple[int, int]]) -> List[Tensor]:
    """One image's level maps, built by explicit indexing of its memory.

    Element (c, y, x) of level l is channel c of token
    ``start_l + y * w_l + x`` of ``memory[img]``. Advanced indexing returns
    a new dense tensor, so this reference shares no layout with
    ``memory_to_pyramid``.

    Returns:
        list[Tensor]: (1, C, h_l, w_l) per level.
    """
    dims = memory.size(-1)
    flat = memory[img].reshape(-1)
    levels, start = [], 0
    for h, w in sizes:
        c = torch.arange(dims)[:, None, None]
        y = torch.arange(h)[None, :, None]
        x = torch.arange(w)[None, None, :]
        levels.append(flat[(start + y * w + x) * dims + c][None])
        start += h * w
    return levels


def reference_pyramid(memory: Tensor, sizes: Sequence[Tuple[int, int]],
                      downsample: nn.Module) -> Tuple[Tensor, ...]:
    """The auxiliary pyramid of spec 2.3 from per-image indexed maps, plus
    the model's own ``downsample`` of the last level."""
    per_image = [image_levels(memory, i, sizes) for i in range(len(memory))]
    levels = [torch.cat(maps) for maps in zip(*per_image)]
    assert all(level.is_contiguous() for level in levels)
    return (*levels, downsample(levels[-1]))


def total_loss(losses: Dict, keep: Callable[[str], bool] = None) -> Tensor:
    """Sum of the entries whose key contains 'loss' (and passes ``keep``);
    per-level lists (RPN) are summed too."""
    parts = []
    for key, value in losses.items():
        if 'loss' not in key or (keep is not None and not keep(key)):
            continue
        parts.extend(value if isinstance(value, (list, tuple)) else [value])
    assert parts, 'no loss selected'
    return sum(parts)


def grads(output: Tensor, inputs: Sequence[Tensor]) -> List[Tensor]:
    """d output / d inputs; an input that is not reached gets zeros."""
    found = torch.autograd.grad(
        output, list(inputs), retain_graph=True, allow_unused=True)
    return [
        torch.zeros_like(t) if g is None else g for t, g in zip(inputs, found)
    ]


def grad_norm(output: Tensor, modules: Iterable[nn.Module]) -> float:
    """Summed absolute gradient of ``output`` over the modules' parameters."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    return sum(g.abs().sum().item() for g in grads(output, params))


def assert_close_scaled(actual: Tensor,
                        expected: Tensor,
                        rtol: float,
                        msg: str = '') -> None:
    """allclose with an absolute tolerance relative to the largest value
    (gradients are small in absolute terms)."""
    atol = rtol * expected.abs().max().item()
    torch.testing.assert_close(
        actual, expected, rtol=rtol, atol=atol, msg=lambda m: f'{msg}\n{m}')


def make_rois() -> Tensor:
    """``ROI_BOXES`` as (n, 5) RoIs (image index first)."""
    return torch.cat([
        torch.cat([torch.full((len(boxes), 1), float(i)),
                   torch.tensor(boxes)], 1)
        for i, boxes in enumerate(ROI_BOXES)
    ])


# -------------------------------------------------------------- fixtures
def _perturb_zero_inits(model: nn.Module) -> nn.Module:
    """Small random values in the zero-initialised last regression layers.

    With zero weights there, every gradient that must pass through a
    regression branch (encoder proposals, box refinement) is zero whether
    or not a detach is in place; a generic parameter point makes zero
    gradients mean "no path".
    """
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for branch in model.query_head.reg_branches:
            for p in branch[-1].parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
    return model


@pytest.fixture(scope='module')
def model() -> nn.Module:
    """The shrunk K = 3 model (the shipped k3_fcos config: the default
    RPN + RoI head and ATSS, plus FCOS), training mode."""
    model = build_model(tiny_model_cfg(path=FCOS_CONFIG))
    return _perturb_zero_inits(model).train()


@pytest.fixture(scope='module')
def batch(model) -> Tuple[Tensor, list]:
    """Two images of different sizes ((96, 128), (128, 112)), padded."""
    return make_batch(model)


@pytest.fixture(scope='module')
def train_graph(model, batch) -> SimpleNamespace:
    """One training forward, step by step as ``CoDETR.loss``, keeping the
    intermediate tensors (shared graph: every test retains it)."""
    inputs, samples = batch
    head = model.query_head
    x = model.extract_feat(inputs)
    outs = head.forward_transformer(x, samples)
    main = head.loss(outs['hidden_states'], outs['references'],
                     outs['enc_outputs_class'], outs['enc_outputs_coord'],
                     samples)
    pyramid = head.memory_to_pyramid(outs['memory'], x)
    torch.manual_seed(0)
    rpn_losses, proposals = model.rpn_loss_and_proposals(pyramid, samples)
    roi_losses, pos_rcnn = model.roi_head[0].loss_and_pos_coords(
        pyramid, proposals, samples)
    pos_coords = [pos_rcnn] + [
        dense_head.loss_and_pos_coords(pyramid, samples)[1]
        for dense_head in model.bbox_head
    ]
    assert [p.source for p in pos_coords] == ['rcnn', 'atss', 'fcos']
    torch.manual_seed(1)
    aux = head.loss_aux(outs, pos_coords, samples)
    return SimpleNamespace(
        samples=samples,
        x=x,
        outs=outs,
        main=main,
        pyramid=pyramid,
        rpn_losses=rpn_losses,
        proposals=proposals,
        roi_losses=roi_losses,
        pos_coords=pos_coords,
        aux=aux)


# ------------------------------------- 1a. RoI pooling on the pyramid
def _pool(model, pyramid: Sequence[Tensor], rois: Tensor) -> Tensor:
    """The RoI head's extractor on the pyramid's first levels."""
    extractor = model.roi_head[0].bbox_roi_extractor
    return extractor(pyramid[:extractor.num_inputs], rois)


def _roi_outputs(model, pyramid: Sequence[Tensor],
                 rois: Tensor) -> List[Tensor]:
    """RoI features three ways: the extractor on the pyramid (the contract
    of ``memory_to_pyramid``), the RoI head's own ``_bbox_forward`` (the
    training and inference path) and every RoIAlign level on every RoI."""
    extractor = model.roi_head[0].bbox_roi_extractor
    return [
        _pool(model, pyramid, rois),
        model.roi_head[0]._bbox_forward(pyramid, rois)['bbox_feats'],
        *(layer(level, rois)
          for layer, level in zip(extractor.roi_layers, pyramid)),
    ]


def test_roi_features_and_gradients_match_per_image_reference(
        model, train_graph):
    """RoI features of a batch of two, and d loss / d memory for a fixed
    random linear loss, equal pooling each image alone (batch of one) from
    its own indexed maps. A failure means RoIAlign reads other positions
    than the pyramid holds (strided views of the memory, read as dense
    NCHW: the old ``memory_to_pyramid``) or the gradient lands elsewhere.
    The extractor on the raw pyramid pins ``memory_to_pyramid``'s
    contract; ``_bbox_forward`` checks the path the RoI head uses."""
    head, sizes = model.query_head, level_sizes(train_graph.x)
    extractor = model.roi_head[0].bbox_roi_extractor
    rois = make_rois()
    assert set(extractor.map_roi_levels(rois, 4).tolist()) == {0, 1, 2, 3}
    memory = train_graph.outs['memory'].detach().clone().requires_grad_()
    outputs = _roi_outputs(model,
                           head.memory_to_pyramid(memory, train_graph.x), rois)
    gen = torch.Generator().manual_seed(3)
    weights = [torch.randn(out.shape, generator=gen) for out in outputs]
    (grad, ) = grads(
        sum((out * w).sum() for out, w in zip(outputs, weights)), [memory])

    ref_memory = memory.detach().clone().requires_grad_()
    ref_loss = 0
    for i in range(2):
        mine = rois[:, 0] == i
        alone = rois[mine].clone()
        alone[:, 0] = 0
        ref_outputs = _roi_outputs(model, image_levels(ref_memory, i, sizes),
                                   alone)
        for j, (out, ref, w) in enumerate(zip(outputs, ref_outputs, weights)):
            assert ref.abs().sum() > 0
            torch.testing.assert_close(
                out[mine],
                ref,
                rtol=1e-6,
                atol=1e-7,
                msg=lambda m: f'image {i}, output {j}: {m}')
            ref_loss = ref_loss + (ref * w[mine]).sum()
    (ref_grad, ) = grads(ref_loss, [ref_memory])
    assert (ref_grad[0] != 0).any() and (ref_grad[1] != 0).any()
    assert_close_scaled(grad, ref_grad, 1e-6)


def test_roi_features_of_one_image_ignore_the_other(model, train_graph):
    """Image 1's RoI features have exactly zero gradient into memory[0]
    and do not change when memory[0] changes (and the other way round).
    A failure means an image pools another image's memory: the bug of the
    strided pyramid, where image 1 read image 0's tokens. (That bug fails
    the second half only: mmcv's RoIAlign backward scatters into the
    logical positions, so its gradient looked right.)"""
    head = model.query_head
    rois = make_rois()
    memory = train_graph.outs['memory'].detach().clone().requires_grad_()
    feats = _pool(model, head.memory_to_pyramid(memory, train_graph.x), rois)
    gen = torch.Generator().manual_seed(4)
    for img in (0, 1):
        mine, other = rois[:, 0] == img, 1 - img
        w = torch.randn(feats[mine].shape, generator=gen)
        (grad, ) = grads((feats[mine] * w).sum(), [memory])
        assert torch.count_nonzero(grad[other]) == 0
        assert torch.count_nonzero(grad[img]) > 0

        changed = memory.detach().clone()
        changed[other] += torch.randn(changed[other].shape, generator=gen)
        with torch.no_grad():
            new = _pool(model, head.memory_to_pyramid(changed, train_graph.x),
                        rois)
        assert torch.equal(new[mine], feats[mine].detach())
        assert not torch.allclose(new[~mine], feats[~mine].detach())


def test_roi_feature_gradient_is_the_derivative_of_the_features(
        model, train_graph):
    """Pyramid and RoIAlign are linear in the memory, so for a linear loss
    L(memory) = <w, features> the autograd gradient g must satisfy
    L(v) = <g, v> for any v. Checked for the pooled maps (RoI head input)
    and their 7x7 mean (the positive-query features of spec 3.1).

    A failure means the forward pass and the backward pass read different
    positions. This is what the strided pyramid did: mmcv's RoIAlign
    forward read ``data_ptr()`` as dense NCHW while its backward scattered
    into the logical NCHW positions, so the gradient was that of the
    correct features, not of the features computed; comparing gradients
    alone does not see it.
    """
    head, x = model.query_head, train_graph.x
    rois = make_rois()
    gen = torch.Generator().manual_seed(5)
    memory = train_graph.outs['memory'].detach().clone().requires_grad_()
    feats = _pool(model, head.memory_to_pyramid(memory, x), rois)
    v = torch.randn(memory.shape, generator=gen)
    with torch.no_grad():
        feats_at_v = _pool(model, head.memory_to_pyramid(v, x), rois)
    for name, reduce in (('maps', lambda f: f),
                         ('mean', lambda f: f.mean(dim=(2, 3)))):
        w = torch.randn(reduce(feats).shape, generator=gen)
        (g, ) = grads((reduce(feats) * w).sum(), [memory])
        loss_at_v = (reduce(feats_at_v) * w).sum().item()
        expected = (g * v).sum().item()
        assert math.isclose(loss_at_v, expected, rel_tol=1e-4), name


# ------------------------------ 1b. whole auxiliary heads, two pyramids
def test_aux_head_losses_and_gradients_match_reference_pyramid(
        model, train_graph):
    """RPN + RoI head, ATSS and FCOS give the same losses, positive
    coordinates and d(head losses)/d memory (per head) on
    ``memory_to_pyramid`` as on the per-image indexed reference pyramid
    (with the model's ``downsample``). A failure in the RoI head alone
    points at the layout RoIAlign reads (convolutions follow strides,
    RoIAlign does not); in every head, at a wrong split of the memory
    into levels or maps."""
    head, samples, x = model.query_head, train_graph.samples, train_graph.x
    memory0 = train_graph.outs['memory'].detach()
    sizes = level_sizes(x)
    builders = {
        'model': lambda m: head.memory_to_pyramid(m, x),
        'reference': lambda m: reference_pyramid(m, sizes, head.downsample),
    }
    groups = {  # loss keys of each head
        'rpn': lambda k: k.startswith('loss_rpn'),
        'roi': lambda k: k.endswith('0'),
        'atss': lambda k: k.endswith('1'),
        'fcos': lambda k: k.endswith('2'),
    }
    runs = {}
    for name, build in builders.items():
        memory = memory0.clone().requires_grad_()
        pyramid = build(memory)
        torch.manual_seed(0)  # RPN and RoI samplers
        losses, pos_coords = model.aux_heads_loss(pyramid, samples)
        # Per head: the heads' gradients differ by orders of magnitude at
        # initialisation, a sum would hide a wrong RoI-head gradient.
        head_grads = {
            group: grads(total_loss(losses, keep), [memory])[0]
            for group, keep in groups.items()
        }
        runs[name] = SimpleNamespace(
            pyramid=pyramid,
            losses=losses,
            pos_coords=pos_coords,
            grads=head_grads)
    got, ref = runs['model'], runs['reference']

    for lvl, (a, b) in enumerate(zip(got.pyramid, ref.pyramid)):
        # levels 0-3 are copies of the memory; level 4 is a convolution
        # + GroupNorm, whose rounding depends on the input's memory layout
        tol = 0 if lvl < len(sizes) else 1e-4
        torch.testing.assert_close(
            a, b, rtol=tol, atol=tol * 0.1, msg=lambda m: f'level {lvl}: {m}')
    assert set(got.losses) == set(ref.losses)
    for key in ref.losses:
        a = torch.stack(list(got.losses[key])) if isinstance(
            got.losses[key], list) else got.losses[key]
        b = torch.stack(list(ref.losses[key])) if isinstance(
            ref.losses[key], list) else ref.losses[key]
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=key)
    assert [p.source for p in got.pos_coords] == ['rcnn', 'atss', 'fcos']
    for a, b in zip(got.pos_coords, ref.pos_coords):
        for field in ('coords', 'labels', 'targets', 'feats'):
            torch.testing.assert_close(
                getattr(a, field),
                getattr(b, field),
                rtol=1e-5,
                atol=1e-6,
                msg=f'{a.source}.{field}')
    for group, expected in ref.grads.items():
        for img in range(2):  # non-trivial: both images get gradient
            assert torch.count_nonzero(expected[img]) > 0, (group, img)
        assert_close_scaled(got.grads[group], expected, 1e-4, msg=group)


# ------------------------------------ 1c. customised positive queries
def test_aux_query_gradients_equal_per_set_decoding(model, train_graph):
    """``loss_aux`` decodes all positive-query sets in one pass. The
    gradient of set k's losses into the memory and into set k's features
    equals that of decoding set k alone (``forward_aux`` with one set,
    ``head_ids=[k]``), and its gradient into the other set's features is
    exactly zero. A failure means the sets leak into each other (missing
    or wrong self-attention mask) or set k uses another head's
    projections. test_aux_decoding.py checks the forward values."""
    head, samples = model.query_head, train_graph.samples
    metas = [s.metainfo for s in samples]
    enc = dict(train_graph.outs)
    memory = enc['memory'].detach().clone().requires_grad_()
    enc['memory'] = memory
    pos_coords = [
        PositiveCoords(p.coords, p.labels, p.targets,
                       p.feats.detach().clone().requires_grad_(), p.source)
        for p in train_graph.pos_coords
    ]
    feats = [p.feats for p in pos_coords]
    num_sets = len(pos_coords)

    torch.manual_seed(1)  # the random selection of build_aux_targets
    losses = head.loss_aux(enc, pos_coords, samples)
    torch.manual_seed(1)
    targets = [
        build_aux_targets(p, metas, head.num_classes, head.max_pos_coords)
        for p in pos_coords
    ]
    for k, target in enumerate(targets):
        batched = grads(
            total_loss(losses, lambda key: key.endswith(f'_aux{k}')),
            [memory, *feats])
        hidden, refs = head.transformer.forward_aux(
            [target.coords], [target.feats],
            memory,
            enc['memory_mask'],
            enc['spatial_shapes'],
            enc['level_start_index'],
            enc['valid_ratios'],
            reg_branches=head.reg_branches,
            head_ids=[k])
        cls_scores, bbox_preds = head(hidden, refs)
        alone = grads(
            total_loss(
                head.loss_aux_by_feat(cls_scores, bbox_preds, [target],
                                      metas)), [memory, feats[k]])
        assert torch.count_nonzero(alone[1]) > 0
        assert_close_scaled(batched[0], alone[0], 1e-4, msg=f'memory {k}')
        assert_close_scaled(batched[1 + k], alone[1], 1e-4, msg=f'feats {k}')
        for other in set(range(num_sets)) - {k}:
            assert torch.count_nonzero(batched[1 + other]) == 0, (k, other)


# -------------------------------------------------- 2. detach points
def test_rpn_proposals_carry_no_gradient_into_roi_head(model, train_graph):
    """Spec 2.5: the RoI head gets 1000 *detached* proposals. The RoI
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
    """Spec 3.1-3.3: RoI-proposal coordinates and ATSS anchors / FCOS
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
    """Spec 3.1-3.2: ``PositiveCoords.feats`` are not detached. The
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
    """Spec 2.2 / 4.1: the top-k encoder proposals become the decoder's
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
    """Spec 4.2, second half of look-forward-twice: the refined box of
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
