"""Transformers of the query heads: encoder, query selection, decoder, and
the decoding of the auxiliary heads' positive queries, with their layers."""
from .co_dab_deformable_detr_transformer import CoDABDeformableDetrTransformer
from .co_deformable_detr_layers import (CoDeformableDetrTransformerDecoder,
                                        CoDeformableDetrTransformerEncoder,
                                        CoMultiScaleDeformableAttention)
from .co_deformable_detr_transformer import CoDeformableDetrTransformer
from .co_dino_decoder import CoDinoTransformerDecoder
from .co_dino_transformer import CoDinoTransformer
from .co_transformer_base import CoTransformerBase
from .dab_deformable_detr_decoder import DABDeformableDetrTransformerDecoder

__all__ = [
    'CoDeformableDetrTransformer', 'CoDeformableDetrTransformerDecoder',
    'CoDeformableDetrTransformerEncoder', 'CoMultiScaleDeformableAttention',
    'CoTransformerBase', 'CoDinoTransformer', 'CoDinoTransformerDecoder',
    'CoDABDeformableDetrTransformer', 'DABDeformableDetrTransformerDecoder'
]
