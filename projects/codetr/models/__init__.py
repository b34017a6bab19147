"""Co-DETR model components, registered in ``mmdet.registry.MODELS``.

The folders follow the method:

- ``detectors/``: :class:`CoDETR` (backbone -> neck -> query head, with the
  auxiliary heads trained on the encoder output) and the head-config
  normalisation it applies.
- ``query_heads/``: :class:`CoDeformDETRHead`, the one-to-one head that owns
  the transformer and computes main, encoder and auxiliary-query losses.
- ``transformers/``: :class:`CoDeformableDetrTransformer` (encoder, mixed
  selection, look-forward-twice decoder, auxiliary decoding) and its layers.
- ``aux_heads/``: :class:`CoATSSHead`, :class:`CoFCOSHead`,
  :class:`CoStandardRoIHead`, the one-to-many heads.
- ``positive_coords.py``: the interface between the two kinds of head:
  what an auxiliary head hands over (:class:`PositiveCoords`) and the
  targets a query head builds from it.
"""
from .aux_heads import CoATSSHead, CoFCOSHead, CoStandardRoIHead
from .detectors import CoDETR
from .positive_coords import AuxQueryTargets, PositiveCoords, build_aux_targets
from .query_heads import CoDeformDETRHead
from .transformers import (CoDeformableDetrTransformer,
                           CoDeformableDetrTransformerDecoder,
                           CoDeformableDetrTransformerEncoder,
                           CoMultiScaleDeformableAttention)

__all__ = [
    'CoDETR', 'CoDeformDETRHead', 'CoDeformableDetrTransformer',
    'CoDeformableDetrTransformerDecoder', 'CoDeformableDetrTransformerEncoder',
    'CoMultiScaleDeformableAttention', 'CoATSSHead', 'CoStandardRoIHead',
    'CoFCOSHead', 'PositiveCoords', 'AuxQueryTargets', 'build_aux_targets'
]
