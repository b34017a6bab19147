"""The golden outputs of the official DAB-Deformable-DETR code and the
codetr model they correspond to.

``tests/data/parity/dab/`` holds them (its README says how the official
code, IDEA-Research/DAB-DETR, produced them): the official model with a
ResNet-18 and 2 + 2 transformer layers, weights filled from the md5 of each
official parameter name (salt ``'#D'``), run on the Co-Deformable-DETR
golden inputs (``tests/data/parity/inputs.pt``) in float32 and float64.
This module builds codetr's ``dab_deformable_detr_r50_50e_coco.py`` with
the same changes, fills it by official name and maps the golden losses to
mmdet's keys. Comparisons and bounds are ``parity_data``'s.
"""
import json
from typing import Dict

import torch
from codetr_testing import REPO_ROOT, build_model, load_config
from mmengine.config import ConfigDict
from parity_data import PARITY_DIR, fill_by_name

from projects.codetr.checkpoint.dab_detr_names import to_dab_detr

DAB_DIR = PARITY_DIR / 'dab'
DAB_CONFIG = f'{REPO_ROOT}/configs/dab_deformable_detr_r50_50e_coco.py'
SALT = '#D'
GOLDEN_FILES = {
    torch.float32: 'official_dab.json',
    torch.float64: 'official_dab_f64.json'
}
# official criterion key -> (mmdet key of the last decoder layer, weight);
# ``_0`` (first layer) becomes the ``d0.`` prefix
LOSS_KEYS = {
    'loss_ce': ('loss_cls', 'loss_ce'),
    'loss_bbox': ('loss_bbox', 'loss_bbox'),
    'loss_giou': ('loss_iou', 'loss_giou'),
}


def dab_golden(dtype: torch.dtype = torch.float32) -> dict:
    """The official outputs in ``dtype``: ``one``/``two`` (losses, pred),
    ``shapes``, ``weight_dict``, ``checks``."""
    with open(DAB_DIR / GOLDEN_FILES[dtype]) as f:
        return json.load(f)


def dab_parity_model_cfg() -> ConfigDict:
    """The published config as the golden run shrank it: ResNet-18 without
    init (neck inputs 128/256/512), 2 encoder and 2 decoder layers."""
    model = load_config(DAB_CONFIG).model
    model.backbone.depth = 18
    model.backbone.init_cfg = None
    model.neck.in_channels = [128, 256, 512]
    model.query_head.transformer.encoder.num_layers = 2
    model.query_head.transformer.decoder.num_layers = 2
    return model


def dab_parity_model(
        dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The parity model with the golden weights (filled by official name;
    integer buffers keep their values), in eval mode, in ``dtype``."""
    model = build_model(dab_parity_model_cfg())
    fill_by_name(model, to_dab_detr, SALT)
    return model.to(dtype)


def weighted_losses(golden_losses: Dict[str, float],
                    weight_dict: Dict[str, float]) -> Dict[str, float]:
    """The official raw criterion outputs weighted as its training loop
    weights them, under mmdet's keys (mmdet's heads return weighted
    losses); logging-only entries (``class_error``, ``cardinality_error``)
    dropped."""
    out = {}
    for key, value in golden_losses.items():
        if key.rsplit('_', 1)[-1].isdigit():
            base, layer = key.rsplit('_', 1)
        else:
            base, layer = key, ''
        if base not in LOSS_KEYS:
            continue
        name, weight_key = LOSS_KEYS[base]
        prefix = f'd{layer}.' if layer else ''
        out[prefix + name] = value * weight_dict[weight_key]
    return out


def clamp_to_image(classes, height: int, width: int):
    """The official per-class detections ([x1, y1, x2, y2, score] lists)
    with the boxes clamped to the image, as mmdet's post-processing does
    (the official PostProcess does not clamp)."""
    clamped = []
    for dets in classes:
        dets = torch.as_tensor(dets, dtype=torch.float64).reshape(-1, 5)
        dets[:, [0, 2]] = dets[:, [0, 2]].clamp(0, width)
        dets[:, [1, 3]] = dets[:, [1, 3]].clamp(0, height)
        clamped.append(dets)
    return clamped
