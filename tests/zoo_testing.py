"""Shrink any shipped model config (ResNet or Swin, Co-Deformable-DETR or
Co-DINO) to a model that trains one step on the CPU in seconds.

Only sizes change: the backbone family, the number and types of auxiliary
heads, the query head and transformer types, their losses and assigners
stay those of the config. The encoder depth is kept where the config
departs from the usual 6 layers (the 9-encoder Co-DINO is about exactly
that).
"""
import glob
import os.path as osp
from typing import List, Optional, Sequence, Tuple

import torch
from codetr_testing import (REPO_ROOT, build_model, load_config, make_batch,
                            tiny_model_cfg)
from mmengine.config import ConfigDict

# Encoder depth of the standard recipes; other depths are what a variant is
# about and survive the shrink.
STANDARD_ENCODER_LAYERS = 6
TINY_RESNET = dict(depth=18, base_channels=16)
TINY_SWIN = dict(
    embed_dims=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=4)


def zoo_configs() -> List[str]:
    """Every shipped experiment config under ``configs/`` (the bases in
    ``_base_`` excluded), relative to the repository root."""
    paths = glob.glob(osp.join(REPO_ROOT, 'configs', '**', '*.py'),
                      recursive=True)
    return sorted(
        osp.relpath(p, REPO_ROOT) for p in paths
        if '_base_' not in osp.relpath(p, REPO_ROOT).split(osp.sep))


def _shrink_backbone(backbone: ConfigDict) -> List[int]:
    """Shrink in place; returns the output widths (the neck's inputs)."""
    out_indices = tuple(backbone.get('out_indices', (0, 1, 2, 3)))
    backbone.init_cfg = None  # no download; random weights suffice
    if backbone.type == 'ResNet':
        backbone.update(TINY_RESNET)
        # BasicBlock: stage i outputs base_channels * 2**i
        return [TINY_RESNET['base_channels'] * 2**i for i in out_indices]
    if backbone.type == 'SwinTransformer':
        backbone.update(TINY_SWIN)
        backbone.pop('pretrained', None)
        return [TINY_SWIN['embed_dims'] * 2**i for i in out_indices]
    raise NotImplementedError(
        f'no tiny version of backbone {backbone.type!r}: add one to '
        f'tests/zoo_testing.py')


def shrink_model_cfg(model: ConfigDict,
                     num_classes: int = 3,
                     num_query: int = 10) -> ConfigDict:
    """The model config shrunk in place (and returned).

    Args:
        model (ConfigDict): ``cfg.model`` of a shipped config.
        num_classes (int): Classes of every head.
        num_query (int): Queries of the query head (and denoising queries).
    """
    model.num_classes = num_classes
    model.neck.in_channels = _shrink_backbone(model.backbone)
    head = model.query_head
    head.num_query = num_query
    if head.get('dn_cfg'):
        group_cfg = head.dn_cfg.get('group_cfg') or {}
        if group_cfg.get('num_dn_queries'):
            group_cfg.num_dn_queries = num_query
    transformer = head.transformer
    if 'two_stage_num_proposals' in transformer:
        transformer.two_stage_num_proposals = num_query
    encoder, decoder = transformer.encoder, transformer.decoder
    if encoder.num_layers == STANDARD_ENCODER_LAYERS:
        encoder.num_layers = 1
    decoder.num_layers = 1
    if encoder.get('num_cp', -1) > encoder.num_layers:
        # checkpointed layers cannot outnumber the (fewer) layers
        encoder.num_cp = encoder.num_layers
    for coder in (encoder, decoder):
        ffn = coder.get('layer_cfg', {}).get('ffn_cfg')
        if ffn is not None:
            ffn.feedforward_channels = 64
    if model.get('rpn_head'):
        model.rpn_head.proposal_cfg.update(nms_pre=300, max_per_img=100)
        model.rpn_head.test_cfg.update(nms_pre=300, max_per_img=100)
    for roi_head in _heads(model.get('roi_head')):
        if roi_head is not None:
            roi_head.bbox_head.fc_out_channels = 32
            roi_head.train_cfg.sampler.num = 64
    return model


def _heads(heads) -> list:
    """Auxiliary head configs of a named dict or a released-style list."""
    if not heads:
        return []
    return list(heads.values()) if isinstance(heads, dict) else list(heads)


def aux_head_types(model: ConfigDict) -> List[str]:
    """Types of the auxiliary heads, RPN first, in order."""
    types = [model.rpn_head.type] if model.get('rpn_head') else []
    for key in ('roi_head', 'bbox_head'):
        types += [h.type for h in _heads(model.get(key)) if h is not None]
    return types


def tiny_zoo_model_cfg(config: str) -> ConfigDict:
    """``cfg.model`` of ``configs/...`` shrunk for a CPU training step."""
    return shrink_model_cfg(load_config(osp.join(REPO_ROOT, config)).model)


#: One config per DETR family (None: codetr_testing's tiny
#: Co-Deformable-DETR), for tests that compare two code paths per family.
FAMILY_CONFIGS = {
    'co_deformable_detr': None,
    'co_dino': 'configs/co_dino_5scale_r50_1x_coco.py',
    'co_dab_deformable_detr': 'configs/co_dab_deformable_detr_r50_1x_coco.py',
}


def double_family_model(family: str,
                        decoder_layers: Optional[int] = None
                        ) -> torch.nn.Module:
    """The tiny model of a family (:data:`FAMILY_CONFIGS`) in float64, in
    training mode; ``decoder_layers`` overrides its decoder's depth."""
    config = FAMILY_CONFIGS[family]
    cfg = tiny_model_cfg() if config is None else tiny_zoo_model_cfg(config)
    if decoder_layers is not None:
        cfg.query_head.transformer.decoder.num_layers = decoder_layers
    return build_model(cfg).double().train()


def double_batch(model: torch.nn.Module,
                 num_boxes: Sequence[int] = (3, 2)
                 ) -> Tuple[torch.Tensor, list]:
    """Two images of different sizes (64x96, 80x64) with ``num_boxes``
    random boxes each, images and boxes in float64."""
    inputs, samples = make_batch(
        model, image_sizes=((64, 96), (80, 64)), num_boxes=num_boxes)
    for sample in samples:
        sample.gt_instances.bboxes = sample.gt_instances.bboxes.double()
    return inputs.double(), samples
