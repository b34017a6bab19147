"""The dtype every computation runs in: float32 under autocast, float64 in
a float64 model (``model.double()``, how the parity tests compare with the
released code), and mmdet/mmcv components that take float32 only given a
float64 path (NMS, soft-NMS, sigmoid cross-entropy, box deltas, anchors).
Float32 results are bit-identical to mmdet's (see ``docs/design.md``,
"Float precision")."""
from .any_dtype_heads import (AnyDtypeAnchorsMixin, AnyDtypeCrossEntropyLoss,
                              AnyDtypeDeltaXYWHBBoxCoder, any_dtype_head_cfgs)
from .any_dtype_nms import any_dtype_nms_cfg, nms, soft_nms
from .dtypes import at_least_float32, compute_dtype, weights_dtype

__all__ = [
    'AnyDtypeAnchorsMixin', 'AnyDtypeCrossEntropyLoss',
    'AnyDtypeDeltaXYWHBBoxCoder', 'any_dtype_head_cfgs', 'any_dtype_nms_cfg',
    'at_least_float32', 'compute_dtype', 'nms', 'soft_nms', 'weights_dtype'
]
