"""The golden outputs of the released Co-DINO code, and the model they need.

``tests/data/parity/codino/`` is a copy of the project's Co-DINO golden data
(``tests/data/parity/README.md``, section ``codino/``, says how the authors'
code produced it): inputs, the losses (seeds 0 and 1) and detections of the
released code, and every released parameter name with its shape. This
module builds the codetr model that corresponds to it (the released Co-DINO
R50 config with an R18 backbone and 2+2 transformer layers), fills its
weights by released name (salt ``'#C'``) and turns the inputs into mmdet 3.x
batches.
"""
import json
import os.path as osp
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from codetr_testing import REPO_ROOT, build_model, load_config
from mmdet.structures import DetDataSample
from mmengine.config import ConfigDict
from parity_data import fill_by_released_name, golden_sample

CODINO_DIR = Path(__file__).resolve().parent / 'data' / 'parity' / 'codino'
CODINO_CONFIG = osp.join(REPO_ROOT, 'configs', 'co_dino_5scale_r50_1x_coco.py')
SALT = '#C'

# the released code's outputs, run in float32 and in float64
GOLDEN_FILES = {
    torch.float32: 'official_codino.json',
    torch.float64: 'official_codino_f64.json'
}


def golden(dtype: torch.dtype = torch.float32) -> dict:
    """``official_codino.json`` (``official_codino_f64.json`` for float64):
    ``shapes`` and, per tag ``one``/``three``, ``losses``,
    ``losses_seed1``, ``deterministic`` and ``pred``."""
    with open(CODINO_DIR / GOLDEN_FILES[dtype]) as f:
        return json.load(f)


def parity_model_cfg() -> ConfigDict:
    """The released Co-DINO R50 config as the golden data changed it:
    ResNet-18 without init, neck in_channels [64, 128, 256, 512], 2 encoder
    (no checkpointing) and 2 decoder layers (auxiliary loss weights stay
    x12), RoI head fc_out_channels 256."""
    model = load_config(CODINO_CONFIG).model
    model.backbone.depth = 18
    model.backbone.init_cfg = None
    model.neck.in_channels = [64, 128, 256, 512]
    model.query_head.transformer.encoder.num_layers = 2
    model.query_head.transformer.encoder.num_cp = 0
    model.query_head.transformer.decoder.num_layers = 2
    model.roi_head.rcnn.bbox_head.fc_out_channels = 256
    return model


def filled_model(
    dtype: torch.dtype = torch.float32
) -> Tuple[torch.nn.Module, Dict[str, str]]:
    """The Co-DINO parity model with golden weights, in eval mode, in
    ``dtype`` (float64: the float32 weights cast exactly, as the golden
    run did)."""
    model = build_model(parity_model_cfg())
    names = fill_by_released_name(model, SALT)
    return model.to(dtype), names


def golden_batch(
    tag: str,
    dtype: torch.dtype = torch.float32
) -> Tuple[torch.Tensor, List[DetDataSample]]:
    """The golden inputs of ``tag`` (``'one'``: image 0, ``'three'``: all).

    Images are already normalised and padded to (288, 352); boxes are
    absolute (x1, y1, x2, y2) in the input frame, scale factor 1; image 2
    has no boxes. Images and boxes in ``dtype`` (float64: the float32
    values cast exactly).
    """
    data = torch.load(CODINO_DIR / 'inputs.pt', weights_only=True)
    num_images = {'one': 1, 'three': 3}[tag]
    inputs = data['img'][:num_images].to(dtype)
    samples = [
        golden_sample(i, data['sizes'][i], tuple(inputs.shape[-2:]),
                      data['gts'][i], data['labels'][i], dtype)
        for i in range(num_images)
    ]
    return inputs, samples
