"""Co-DETR model components, registered in ``mmdet.registry.MODELS``.

- :class:`CoDETR`: the detector (backbone -> neck -> query head, with the
  auxiliary heads trained on the encoder output).
- :class:`CoDeformDETRHead`: the query head (owns the transformer).
- :class:`CoDeformableDetrTransformer`: encoder, mixed selection,
  look-forward-twice decoder and auxiliary decoding.
- :class:`CoATSSHead`, :class:`CoStandardRoIHead`: auxiliary heads that
  report positive coordinates (:class:`PositiveCoords`).
"""
from .co_atss_head import CoATSSHead
from .co_deform_detr_head import CoDeformDETRHead
from .co_deformable_detr_layers import (CoDeformableDetrTransformerDecoder,
                                        CoDeformableDetrTransformerEncoder,
                                        CoMultiScaleDeformableAttention)
from .co_deformable_detr_transformer import CoDeformableDetrTransformer
from .co_detr import CoDETR
from .co_fcos_head import CoFCOSHead
from .co_standard_roi_head import CoStandardRoIHead
from .positive_coords import AuxQueryTargets, PositiveCoords, build_aux_targets

__all__ = [
    'CoDETR', 'CoDeformDETRHead', 'CoDeformableDetrTransformer',
    'CoDeformableDetrTransformerDecoder', 'CoDeformableDetrTransformerEncoder',
    'CoMultiScaleDeformableAttention', 'CoATSSHead', 'CoStandardRoIHead',
    'CoFCOSHead', 'PositiveCoords', 'AuxQueryTargets', 'build_aux_targets'
]
