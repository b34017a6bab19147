"""The DINO decoder of Co-DINO (mmdet's, with two changes; see the class).

Its own file: ``tests/models/test_codino_detach_points.py`` removes the
detach of the refined boxes by the file that calls it.
"""
from typing import Optional, Tuple

import torch
from mmdet.models.layers import MLP, DinoTransformerDecoder, inverse_sigmoid
from torch import Tensor, nn

from .co_deformable_detr_layers import co_decoder_layers
from .compiled_layers import CompiledLayersMixin
from .sine_encoding import coordinate_to_encoding


class CoDinoTransformerDecoder(CompiledLayersMixin, DinoTransformerDecoder):
    """mmdet's DINO decoder whose layers use
    :class:`CoMultiScaleDeformableAttention` (fp32 sampling under autocast,
    no host synchronisation) and whose query positions are encoded in the
    reference boxes' dtype (mmdet's ``coordinate_to_encoding`` builds its
    frequencies in float32, also for a float64 model).

    The forward is mmdet's: per layer, query_pos = ``ref_point_head`` (MLP
    512-256-256) of the sine embedding of the reference box scaled by the
    valid ratios; box refinement with ``inverse_sigmoid(eps=1e-3)``; the
    returned references are the refined boxes before detaching
    (look-forward-twice) and the hidden states pass the shared ``norm``.

    Args:
        compile_layers (bool | dict): Run the layers through
            ``torch.compile`` (:mod:`.compiled_layers`). Defaults to False.
        Others: mmdet's.
    """

    def _init_layers(self) -> None:
        self.layers = co_decoder_layers(
            self, 'DINO decoders have no post norm (they share an output '
            'norm)')
        self.embed_dims = dims = self.layers[0].embed_dims
        self.ref_point_head = MLP(dims * 2, dims, dims, 2)
        self.norm = nn.LayerNorm(dims)

    def forward(self, query: Tensor, value: Tensor,
                key_padding_mask: Optional[Tensor],
                self_attn_mask: Optional[Tensor], reference_points: Tensor,
                spatial_shapes: Tensor, level_start_index: Tensor,
                valid_ratios: Tensor, reg_branches: Optional[nn.ModuleList],
                **kwargs) -> Tuple[Tensor, Tensor]:
        """``DinoTransformerDecoder.forward`` with the query positions of
        :func:`~.sine_encoding.coordinate_to_encoding`.

        Args:
            query (Tensor): (bs, num_queries, dim).
            value (Tensor): Encoder memory, (bs, num_value, dim).
            key_padding_mask (Tensor, optional): (bs, num_value), True on
                padding.
            self_attn_mask (Tensor, optional): (num_queries, num_queries)
                bool, True where attention is blocked.
            reference_points (Tensor): (bs, num_queries, 4) normalised
                (cx, cy, w, h).
            spatial_shapes, level_start_index (Tensor): The memory's levels.
            valid_ratios (Tensor): (bs, num_levels, 2).
            reg_branches (nn.ModuleList, optional): Per-layer box
                refinement.

        Returns:
            tuple[Tensor, Tensor]: With ``return_intermediate``, the normed
            hidden states (num_layers, bs, num_queries, dim) and the
            references (num_layers + 1, bs, num_queries, 4); otherwise the
            last layer's query and reference.
        """
        intermediate = []
        intermediate_reference_points = [reference_points]
        for lid, layer in enumerate(self.layers):
            if reference_points.shape[-1] != 4:
                raise ValueError('DINO references are (cx, cy, w, h) boxes')
            reference_points_input = reference_points[:, :, None] * \
                torch.cat([valid_ratios, valid_ratios], -1)[:, None]
            query_pos = self.ref_point_head(
                coordinate_to_encoding(reference_points_input[:, :, 0, :]))
            query = self.layer_runner(layer)(
                query,
                query_pos=query_pos,
                value=value,
                key_padding_mask=key_padding_mask,
                self_attn_mask=self_attn_mask,
                spatial_shapes=spatial_shapes,
                level_start_index=level_start_index,
                valid_ratios=valid_ratios,
                reference_points=reference_points_input,
                **kwargs)
            if reg_branches is not None:
                new_reference_points = (
                    reg_branches[lid](query) +
                    inverse_sigmoid(reference_points, eps=1e-3)).sigmoid()
                reference_points = new_reference_points.detach()
            if self.return_intermediate:
                intermediate.append(self.norm(query))
                intermediate_reference_points.append(new_reference_points)
        if self.return_intermediate:
            return torch.stack(intermediate), torch.stack(
                intermediate_reference_points)
        return query, reference_points
