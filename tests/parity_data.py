"""The golden outputs of the released Co-DETR code, and the model they need.

``tests/data/parity/`` is a copy of the project's golden data (its README
says how the authors' code produced it): the deterministic weight filler
``fill.py``, the inputs, the losses and detections of the released code,
and every released parameter name with its shape. This module builds the
codetr model that corresponds to it (the released R50 config with an R18
backbone and 2+2 transformer layers), fills its weights by released name
and turns the inputs into mmdet 3.x batches.
"""
import importlib.util
import json
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from codetr_testing import R50_CONFIG, build_model, load_config
from mmdet.structures import DetDataSample
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData

PARITY_DIR = Path(__file__).resolve().parent / 'data' / 'parity'


def _load_fill():
    spec = importlib.util.spec_from_file_location('parity_fill',
                                                  PARITY_DIR / 'fill.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fill


fill = _load_fill()


def golden() -> dict:
    """``official_seed0.json``: ``results`` and ``shapes``."""
    with open(PARITY_DIR / 'official_seed0.json') as f:
        return json.load(f)


def parity_model_cfg() -> ConfigDict:
    """The released R50 config as the golden data changed it: ResNet-18
    without init, neck in_channels [128, 256, 512], 2 encoder and 2 decoder
    layers (auxiliary loss weights stay x12), RoI head fc_out_channels 256.
    """
    model = load_config(R50_CONFIG).model
    model.backbone.depth = 18
    model.backbone.init_cfg = None
    model.neck.in_channels = [128, 256, 512]
    model.query_head.transformer.encoder.num_layers = 2
    model.query_head.transformer.decoder.num_layers = 2
    model.roi_head.rcnn.bbox_head.fc_out_channels = 256
    return model


def fill_by_released_name(model: torch.nn.Module,
                          salt: str = '') -> Dict[str, str]:
    """Fill every floating tensor of ``model`` as the golden data did.

    Each tensor is filled by ``fill.py`` from its released name and
    ``salt`` (0-d tensors and integer buffers keep their values, as in the
    golden run).

    Returns:
        dict[str, str]: codetr name -> released name of every tensor.
    """
    from projects.codetr.checkpoint import to_released
    names = {}
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            released = to_released(name)
            names[name] = released
            if tensor.is_floating_point():
                tensor.copy_(fill(released, tensor.detach().clone(), salt))
    return names


def filled_model() -> Tuple[torch.nn.Module, Dict[str, str]]:
    """The parity model with golden weights, in eval mode."""
    model = build_model(parity_model_cfg())
    return model, fill_by_released_name(model)


def golden_batch(num_images: int) -> Tuple[torch.Tensor, List]:
    """The first ``num_images`` golden inputs as (inputs, data samples).

    Images are already normalised and padded to (256, 320); boxes are
    absolute (x1, y1, x2, y2) in the input frame, scale factor 1.
    """
    data = torch.load(PARITY_DIR / 'inputs.pt', weights_only=True)
    inputs = data['img'][:num_images]
    samples = [
        golden_sample(i, data['metas'][i], tuple(inputs.shape[-2:]),
                      data['gts'][i], data['labels'][i])
        for i in range(num_images)
    ]
    return inputs, samples


def golden_sample(img_id: int, size, batch_shape: tuple,
                  boxes: torch.Tensor,
                  labels: torch.Tensor) -> DetDataSample:
    """A data sample as the golden runs' metas describe it: ``img_shape``
    = ``ori_shape`` = ``size`` (h, w), padded to ``batch_shape``, scale
    factor 1; ``boxes`` absolute (x1, y1, x2, y2) in the input frame."""
    h, w = size
    sample = DetDataSample(
        metainfo=dict(
            img_id=img_id,
            img_shape=(h, w),
            ori_shape=(h, w),
            pad_shape=batch_shape,
            batch_input_shape=batch_shape,
            scale_factor=(1.0, 1.0)))
    sample.gt_instances = InstanceData(
        bboxes=boxes.float().reshape(-1, 4), labels=labels.long())
    return sample


def deterministic_keys(num_images: int) -> List[str]:
    """Loss keys that the golden README calls seed-independent."""
    keys = list(golden()['results']['one_losses'])
    if num_images == 1:  # the sampled RPN anchors and RoIs are random
        return [
            k for k in keys if k not in ('loss_rpn_cls', 'loss_cls0', 'acc0')
        ]
    # With two images the auxiliary queries are padded with random
    # negatives too: main, encoder, RPN box, RoI box and ATSS losses.
    main = [
        f'{prefix}loss_{name}' for prefix in ('enc_', '', 'd0.')
        for name in ('cls', 'bbox', 'iou')
    ]
    return main + [
        'loss_rpn_bbox', 'loss_bbox0', 'loss_cls1', 'loss_bbox1',
        'loss_centerness1'
    ]


def detections_per_class(bboxes: torch.Tensor, scores: torch.Tensor,
                         labels: torch.Tensor,
                         num_classes: int) -> List[torch.Tensor]:
    """mmdet 2.x's ``bbox2result``: per class an (n, 5) [x1, y1, x2, y2,
    score] array in the detector's output order."""
    dets = torch.cat([bboxes, scores[:, None]], dim=1)
    return [dets[labels == c] for c in range(num_classes)]
