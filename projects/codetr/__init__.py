"""Co-DETR (ICCV 2023) for MMDetection 3.x.

Importing this package registers the Co-DETR modules in mmdet's registries,
which is what ``custom_imports=dict(imports=['projects.codetr'])`` does in the
configs. The layout follows the method:

- ``models``: the detector, the query head and its transformer, the
  auxiliary heads and the typed interface between them;
- ``datasets``: the generated shapes dataset, input checks, robust loading;
- ``checkpoint``: the released (mmdet 2.x) parameter names and the loading
  and conversion of the released checkpoints;
- ``engine``: hooks and helpers of the training tools;
- ``utils``: compatibility with current torch.
"""
from . import datasets, engine  # noqa: F401 (data checks, hooks)
from .models import *  # noqa: F401,F403
from .utils import compat  # noqa: F401 (lets torch>=2.6 load mmengine ckpts)
