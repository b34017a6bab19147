"""Co-DETR model components, registered in ``mmdet.registry.MODELS``.

The folders follow the method:

- ``detectors/``: :class:`CoDETR` (backbone -> neck -> query head, with the
  auxiliary heads trained on the encoder output) and the head-config
  normalisation it applies.
- ``query_heads/``: :class:`CoDeformDETRHead` and :class:`CoDINOHead`, the
  one-to-one heads that own the transformer and compute main, encoder
  (and denoising) and auxiliary-query losses; what they share is
  :class:`CoQueryHeadMixin`.
- ``transformers/``: :class:`CoDeformableDetrTransformer` (encoder, mixed
  selection, look-forward-twice decoder, auxiliary decoding),
  :class:`CoDinoTransformer` (top-k selection, denoising, DINO decoder),
  :class:`CoDABDeformableDetrTransformer` (learnt anchor queries whose
  positional queries the decoder generates), their common base and layers.
- ``aux_heads/``: :class:`CoATSSHead`, :class:`CoFCOSHead`,
  :class:`CoStandardRoIHead`, the one-to-many heads, and the RoI head's box
  head with losses that read nothing back.
- ``task_modules/``: speed-ups that compute what the mmdet parts they
  replace compute (cached anchors, a sync-free MaxIoU assigner, level
  batching, level shapes, an RoI extractor with one read).
- ``precision/``: dtype rules (float32 under autocast, float64 for
  ``model.double()``) and float64 paths of float32-only mmdet/mmcv parts.
- ``data_preprocessors/``: :class:`BatchPadToMultiple`, training batches
  padded to few distinct shapes (cuDNN plans are built once per shape).
- ``losses/``: losses that reproduce a DETR codebase's arithmetic where
  mmdet's differs (:class:`NormalizedGIoULoss`), mmdet's GIoU loss with
  its gradient in closed form (:class:`AnalyticGIoULoss`), and mmdet's
  losses without host reads (``SyncFree*``).
- ``positive_coords.py``: the interface between the two kinds of head:
  what an auxiliary head hands over (:class:`PositiveCoords`) and the
  targets a query head builds from it.
"""
from .aux_heads import CoATSSHead, CoFCOSHead, CoStandardRoIHead
from .data_preprocessors import BatchPadToMultiple
from .detectors import CoDETR
from .losses import AnalyticGIoULoss, NormalizedGIoULoss
from .positive_coords import AuxQueryTargets, PositiveCoords, build_aux_targets
from .precision import AnyDtypeCrossEntropyLoss, AnyDtypeDeltaXYWHBBoxCoder
from .query_heads import CoDeformDETRHead, CoDINOHead, CoQueryHeadMixin
from .task_modules import CachedAnchorGenerator, SyncFreeMaxIoUAssigner
from .transformers import (CoDABDeformableDetrTransformer,
                           CoDeformableDetrTransformer,
                           CoDeformableDetrTransformerDecoder,
                           CoDeformableDetrTransformerEncoder,
                           CoDinoTransformer, CoDinoTransformerDecoder,
                           CoMultiScaleDeformableAttention, CoTransformerBase)

__all__ = [
    'CoDETR', 'CoDeformDETRHead', 'CoDeformableDetrTransformer',
    'CoDeformableDetrTransformerDecoder', 'CoDeformableDetrTransformerEncoder',
    'CoMultiScaleDeformableAttention', 'CoATSSHead', 'CoStandardRoIHead',
    'CoFCOSHead', 'PositiveCoords', 'AuxQueryTargets', 'build_aux_targets',
    'CoDINOHead', 'CoQueryHeadMixin', 'CoDinoTransformer',
    'CoDinoTransformerDecoder', 'CoTransformerBase', 'CachedAnchorGenerator',
    'SyncFreeMaxIoUAssigner', 'AnyDtypeCrossEntropyLoss',
    'AnyDtypeDeltaXYWHBBoxCoder', 'CoDABDeformableDetrTransformer',
    'NormalizedGIoULoss', 'AnalyticGIoULoss', 'BatchPadToMultiple'
]
