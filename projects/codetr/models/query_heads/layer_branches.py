"""Class logits and boxes of all decoder layers from their branches at once.

mmdet's ``DeformableDETRHead.forward`` (and ``DINOHead``'s) runs each
decoder layer's classification branch (one ``Linear``) and regression
branch (``Linear``-``ReLU``-``Linear``-``ReLU``-``Linear``) in a loop over
the layers, and takes the inverse sigmoid of each layer's reference boxes
separately: with 6 layers about 90 operations forward and twice as many
backward, each a kernel launch, for matrix products of a few hundred rows.
The training step is bound by the host issuing its kernels, so
:func:`layer_predictions` stacks the layers instead: the weights of each
position of the branches into one (L, out, in) tensor, the hidden states
into (L, N, dim), one batched matrix product (``baddbmm``) per position,
and one inverse sigmoid of the stacked references. The parameters stay
the branches' own (checkpoints and the decoder's box refinement use them
as before; their gradients reach them through the stacking). The values
are those of the loop (mmdet's, with the head's ``eps``) up to the order of
floating-point sums in the products.

The stacked path reads the ``Linear`` modules' weights and does not call
them: branches of another structure (anything but ``nn.Linear``, mmcv's
``Linear`` and ``nn.ReLU`` exactly, or layers whose shapes differ) and
modules with forward hooks (weight normalisation, profilers' hooks) take
the loop, which calls them.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from mmcv.cnn import Linear as MMCVLinear
from mmdet.models.layers import inverse_sigmoid
from torch import Tensor, nn

#: Module types the stacked path computes itself: exactly these, not their
#: subclasses, whose forward may differ (e.g. quantised or low-rank layers).
LINEAR_TYPES = (nn.Linear, MMCVLinear)


def branch_modules(branch: nn.Module) -> Optional[List[nn.Module]]:
    """The layers of one branch, in order, if the stacked path can compute
    them.

    Args:
        branch (nn.Module): A ``Linear``, or a ``Sequential`` of ``Linear``
            and ``ReLU`` modules (mmdet's DETR branches).

    Returns:
        list[nn.Module] | None: The layers; None for another structure or a
        module with forward hooks (the stacked path would skip them).
    """
    modules = list(branch) if isinstance(branch, nn.Sequential) else [branch]
    for module in [branch] + modules:
        if module._forward_hooks or module._forward_pre_hooks:
            return None
    if all(
            type(m) in LINEAR_TYPES or type(m) is nn.ReLU
            for m in modules):
        return modules
    return None


def stackable(branches: Sequence[nn.Module]) -> bool:
    """Whether the stacked path can compute ``branches`` together.

    Args:
        branches (Sequence[nn.Module]): One branch per decoder layer.

    Returns:
        bool: True when every branch passes :func:`branch_modules` and all
        have the same layer types in the same order, with weights of the
        same shapes and biases alike.
    """
    layouts = [branch_modules(branch) for branch in branches]
    if not layouts or any(layout is None for layout in layouts):
        return False

    def signature(module: nn.Module) -> tuple:
        """What must match across the branches at one position."""
        if isinstance(module, nn.ReLU):
            return ('relu', )
        return ('linear', tuple(module.weight.shape), module.bias is not None)

    first = [signature(m) for m in layouts[0]]
    return all([signature(m) for m in layout] == first
               for layout in layouts[1:])


def stacked_branches(branches: Sequence[nn.Module], inputs: Tensor) -> Tensor:
    """Each branch applied to its own slice of ``inputs``, at once.

    Args:
        branches (Sequence[nn.Module]): L branches for which
            :func:`stackable` holds.
        inputs (Tensor): (L, N, in_features); slice l goes through branch l.

    Returns:
        Tensor: (L, N, out_features).
    """
    # Features along dim 1, rows along dim 2: ``W @ x`` leaves each stacked
    # weight's gradient in the weight's own (out, in) layout, so the slices
    # accumulate into the branches' parameters without a copy each.
    out = inputs.transpose(1, 2)
    for modules in zip(*(branch_modules(branch) for branch in branches)):
        if isinstance(modules[0], nn.ReLU):
            out = torch.relu(out)
            continue
        weight = torch.stack([m.weight for m in modules])  # (L, out, in)
        if modules[0].bias is None:
            out = torch.bmm(weight, out)
        else:
            bias = torch.stack([m.bias for m in modules])[:, :, None]
            out = torch.baddbmm(bias, weight, out)
    return out.transpose(1, 2).contiguous()


def layer_predictions(cls_branches: Sequence[nn.Module],
                      reg_branches: Sequence[nn.Module],
                      hidden_states: Tensor,
                      references: Sequence[Tensor],
                      eps: float,
                      batched: bool = True) -> Tuple[Tensor, Tensor]:
    """Class logits and refined boxes of every decoder layer (mmdet's
    ``DeformableDETRHead.forward``).

    Args:
        cls_branches (Sequence[nn.Module]): Per-layer classification
            branches; the first ``num_layers`` are used.
        reg_branches (Sequence[nn.Module]): Per-layer regression branches,
            giving (cx, cy, w, h) offsets in inverse-sigmoid space.
        hidden_states (Tensor): (num_layers, bs, num_queries, dim).
        references (Sequence[Tensor]): At least ``num_layers`` reference
            boxes, each (bs, num_queries, 4) normalised (cx, cy, w, h);
            layer l refines ``references[l]``.
        eps (float): ``eps`` of the inverse sigmoid of the references.
        batched (bool): Stack the layers (:func:`stacked_branches`) when
            the branches allow it; False runs mmdet's loop over the layers.
            Defaults to True.

    Returns:
        tuple[Tensor, Tensor]: Logits (num_layers, bs, num_queries,
        cls_out_channels) and boxes (num_layers, bs, num_queries, 4),
        normalised (cx, cy, w, h).
    """
    num_layers, bs, num_queries, dims = hidden_states.shape
    cls_branches = list(cls_branches)[:num_layers]
    reg_branches = list(reg_branches)[:num_layers]
    if batched and stackable(cls_branches) and stackable(reg_branches):
        flat = hidden_states.reshape(num_layers, bs * num_queries, dims)
        classes = stacked_branches(cls_branches, flat)
        offsets = stacked_branches(reg_branches, flat)
        refs = inverse_sigmoid(torch.stack(list(references[:num_layers])),
                               eps=eps)
        shape = (num_layers, bs, num_queries)  # -1 fails with 0 queries
        coords = (offsets.view(*shape, offsets.size(-1)) + refs).sigmoid()
        return classes.view(*shape, classes.size(-1)), coords
    classes, coords = [], []
    for layer_id, hidden_state in enumerate(hidden_states):
        reference = inverse_sigmoid(references[layer_id], eps=eps)
        classes.append(cls_branches[layer_id](hidden_state))
        coords.append((reg_branches[layer_id](hidden_state) +
                       reference).sigmoid())
    return torch.stack(classes), torch.stack(coords)
