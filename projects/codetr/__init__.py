"""Co-DETR (ICCV 2023) for MMDetection 3.x.

Importing this package registers the Co-DETR modules in mmdet's registries,
which is what ``custom_imports=dict(imports=['projects.codetr'])`` does in the
configs.
"""
from .models import *  # noqa: F401,F403
from .utils import compat  # noqa: F401 (lets torch>=2.6 load mmengine ckpts)
