"""Gradient paths between the encoder memory and the auxiliary branches.

Property tests (finite losses, every parameter has a gradient) cannot see a
wrong gradient path: the auxiliary pyramid once held strided views of the
encoder memory, mmcv's RoIAlign read them as dense NCHW and pooled the
wrong positions (image 1 read image 0's memory), and every loss stayed
finite. The tests here compare numbers with plain references instead:
features, losses and gradients through ``memory_to_pyramid`` equal those
of a per-image, index-based pyramid (docs/design.md, data flow and detach
points), and the batched
auxiliary decoding sends the gradient one pass per set sends (docs/design.md,
positive queries).
The detach points are in test_detach_points.py; the model,
the training graph and the gradient helpers in gradient_graph.py.
"""
import math
from types import SimpleNamespace
from typing import List, Sequence, Tuple

import torch
from gradient_graph import assert_close_scaled, grads, total_loss
from torch import Tensor, nn

from projects.codetr.models import PositiveCoords, build_aux_targets

pytest_plugins = ['gradient_graph']  # fixtures: model, batch, train_graph

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
    """The auxiliary pyramid docs/design.md, data flow from per-image indexed
    maps, plus
    the model's own ``downsample`` of the last level."""
    per_image = [image_levels(memory, i, sizes) for i in range(len(memory))]
    levels = [torch.cat(maps) for maps in zip(*per_image)]
    assert all(level.is_contiguous() for level in levels)
    return (*levels, downsample(levels[-1]))


def make_rois() -> Tensor:
    """``ROI_BOXES`` as (n, 5) RoIs (image index first)."""
    return torch.cat([
        torch.cat([torch.full((len(boxes), 1), float(i)),
                   torch.tensor(boxes)], 1)
        for i, boxes in enumerate(ROI_BOXES)
    ])


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
    and their 7x7 mean (the positive-query features docs/design.md, positive
    queries).

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
    (with the model's ``downsample``). A failure in every head points at a
    wrong split of the memory into levels or maps. A strided (but
    correctly ordered) pyramid does not fail here: ``CoStandardRoIHead``
    pools dense copies; the 1a tests above and
    ``test_pyramid_contiguity.py`` hold ``memory_to_pyramid`` to dense
    maps."""
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
