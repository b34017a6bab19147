"""The DAB-Deformable-DETR decoder: positional queries from anchor boxes.

DAB-DETR (Liu et al., "DAB-DETR: Dynamic Anchor Boxes are Better Queries for
DETR", ICLR 2022) makes each query a 4-d anchor box (cx, cy, w, h). At every
decoder layer the positional query is generated from the current anchor: a
sine embedding of (x, y, w, h) through an MLP (``ref_point_head``), scaled
from the second layer on by an MLP of the content query (``query_scale``);
the anchors are refined layer by layer and detached between layers, as in
Deformable DETR's box refinement (docs/design.md, DAB-Deformable-DETR).

The layers are Co-Deformable-DETR's (mmdet's Deformable DETR decoder layer
with fp32 deformable sampling under autocast); only the query generation
differs, so the decoder subclasses :class:`CoDeformableDetrTransformerDecoder`.
"""
from typing import Optional

from mmdet.models.layers import MLP
from torch import Tensor

from .co_deformable_detr_layers import CoDeformableDetrTransformerDecoder
from .sine_encoding import coordinate_to_encoding


class DABDeformableDetrTransformerDecoder(CoDeformableDetrTransformerDecoder):
    """Deformable DETR decoder whose positional queries come from the
    anchor boxes at every layer.

    Args:
        look_forward_twice (bool): Return non-detached refined anchors (see
            :class:`CoDeformableDetrTransformerDecoder`). DAB-Deformable-DETR
            returns detached ones. Defaults to False.
        ref_eps (float): ``eps`` of the inverse sigmoid in the refinement
            (1e-3 in DAB-DETR's code). Defaults to 1e-3.
        *args, **kwargs: ``DeformableDetrTransformerDecoder`` arguments
            (``num_layers``, ``layer_cfg``, ``post_norm_cfg=None``).
    """

    def __init__(self,
                 *args,
                 look_forward_twice: bool = False,
                 ref_eps: float = 1e-3,
                 **kwargs) -> None:
        self.ref_eps = ref_eps
        super().__init__(
            *args, look_forward_twice=look_forward_twice, **kwargs)

    def _init_layers(self) -> None:
        """The layers, then the two MLPs of the query generation."""
        super()._init_layers()
        dims = self.embed_dims
        self.ref_point_head = MLP(2 * dims, dims, dims, 2)
        self.query_scale = MLP(dims, dims, dims, 2)

    def layer_query_pos(self, query_pos: Optional[Tensor], anchors: Tensor,
                        content: Tensor, layer_id: int) -> Tensor:
        """The positional queries of one layer, from its anchors.

        The sine embedding of the anchors times the first level's valid
        ratios (as DAB-DETR's code embeds them) through ``ref_point_head``;
        from the second layer on, scaled element-wise by ``query_scale`` of
        the content queries.

        Args:
            query_pos (Tensor, optional): Must be None: the positional
                queries are generated here.
            anchors (Tensor): (bs, num_queries, num_levels, 4) normalised
                (cx, cy, w, h) times the valid ratios.
            content (Tensor): (bs, num_queries, dim) content queries
                entering the layer.
            layer_id (int): 0 for the first layer, which is not scaled.

        Returns:
            Tensor: (bs, num_queries, dim).
        """
        if query_pos is not None:
            raise ValueError('DAB-Deformable-DETR generates its positional '
                             'queries from the anchors; query_pos must be '
                             'None')
        sine = coordinate_to_encoding(
            anchors[:, :, 0], num_feats=self.embed_dims // 2)
        query_pos = self.ref_point_head(sine)
        if layer_id == 0:
            return query_pos
        return self.query_scale(content) * query_pos
