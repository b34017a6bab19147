"""The golden outputs of the released Co-DETR code, the model they need and
how the parity tests compare with them.

``tests/data/parity/`` is a copy of the project's golden data (its README
says how the authors' code produced it): the deterministic weight filler
``fill.py``, the inputs, the losses and detections of the released code in
float32 and in float64, and every released parameter name with its shape.
This module builds the codetr model that corresponds to it (the released
R50 config with an R18 backbone and 2+2 transformer layers), fills its
weights by released name, turns the inputs into mmdet 3.x batches, and
holds the comparison and the bounds that both parity tests use.

Bounds. In float64 the released code agrees with itself across thread
counts to 3e-16 (losses), and ours agrees with it to about 5e-15 relative
(losses), 3e-12 px and 2e-15 in score (detections): F64_LOSS_RTOL and
F64_DETECTIONS leave six orders of magnitude for other CPUs' kernels, and
the smallest model error tried (one decoder weight matrix scaled by 1.01)
moves the losses by about 1e-3. float32 is compared only where one-ulp
differences of the CPU kernels are not amplified (no query selection):
F32_LOSS_RTOL and F32_DETECTIONS, the bounds of the earlier float32 suite.
"""
import importlib.util
import json
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from codetr_testing import R50_CONFIG, build_model, load_config
from mmdet.structures import DetDataSample
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData
from scipy.optimize import linear_sum_assignment

PARITY_DIR = Path(__file__).resolve().parent / 'data' / 'parity'

# relative, on every seed-independent loss (float64)
F64_LOSS_RTOL = 1e-8
# paired detections (float64): box coordinates (px), scores, and detections
# without a partner (another count in a class, or pairs SWAP_PX apart)
F64_DETECTIONS = dict(box=1e-6, score=1e-8, moved=0)
# float32, branches without query selection
F32_LOSS_RTOL = 1e-4
F32_DETECTIONS = dict(box=1e-3, score=1e-5, moved=0)
# paired detections further apart than this (px) are different detections
SWAP_PX = 1.0
# the query head's one-to-one losses (last and first decoder layer): they
# depend on which encoder tokens the query selection picks
QUERY_HEAD_LOSSES = [
    f'{prefix}loss_{name}' for prefix in ('', 'd0.')
    for name in ('cls', 'bbox', 'iou')
]


def _load_fill():
    spec = importlib.util.spec_from_file_location('parity_fill',
                                                  PARITY_DIR / 'fill.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fill


fill = _load_fill()

# the released code's outputs, run in float32 and in float64
GOLDEN_FILES = {
    torch.float32: 'official_seed0.json',
    torch.float64: 'official_seed0_f64.json'
}


def golden(dtype: torch.dtype = torch.float32) -> dict:
    """``official_seed0.json`` (``official_seed0_f64.json`` for float64):
    ``results`` and ``shapes``."""
    with open(PARITY_DIR / GOLDEN_FILES[dtype]) as f:
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


def fill_by_name(model: torch.nn.Module, to_name: Callable[[str], str],
                 salt: str = '') -> Dict[str, str]:
    """Fill every floating tensor of ``model`` as a golden run did.

    Each tensor is filled by ``fill.py`` from its name in the golden code,
    ``to_name(codetr name)``, and ``salt`` (0-d tensors and integer buffers
    keep their values, as in the golden runs).

    Returns:
        dict[str, str]: codetr name -> golden-code name of every tensor.
    """
    names = {}
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            names[name] = to_name(name)
            if tensor.is_floating_point():
                tensor.copy_(fill(names[name], tensor.detach().clone(), salt))
    return names


def fill_by_released_name(model: torch.nn.Module,
                          salt: str = '') -> Dict[str, str]:
    """:func:`fill_by_name` by the released code's names.

    Returns:
        dict[str, str]: codetr name -> released name of every tensor.
    """
    from projects.codetr.checkpoint import to_released
    return fill_by_name(model, to_released, salt)


def filled_model(
    dtype: torch.dtype = torch.float32
) -> Tuple[torch.nn.Module, Dict[str, str]]:
    """The parity model with golden weights, in eval mode, in ``dtype``
    (float64: the float32 weights cast exactly, as the golden run did)."""
    model = build_model(parity_model_cfg())
    names = fill_by_released_name(model)
    return model.to(dtype), names


def golden_batch(
        num_images: int,
        dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, List]:
    """The first ``num_images`` golden inputs as (inputs, data samples).

    Images are already normalised and padded to (256, 320); boxes are
    absolute (x1, y1, x2, y2) in the input frame, scale factor 1. Images
    and boxes in ``dtype`` (float64: the float32 values cast exactly).
    """
    data = torch.load(PARITY_DIR / 'inputs.pt', weights_only=True)
    inputs = data['img'][:num_images].to(dtype)
    samples = [
        golden_sample(i, data['metas'][i], tuple(inputs.shape[-2:]),
                      data['gts'][i], data['labels'][i], dtype)
        for i in range(num_images)
    ]
    return inputs, samples


def golden_sample(img_id: int,
                  size,
                  batch_shape: tuple,
                  boxes: torch.Tensor,
                  labels: torch.Tensor,
                  dtype: torch.dtype = torch.float32) -> DetDataSample:
    """A data sample as the golden runs' metas describe it: ``img_shape``
    = ``ori_shape`` = ``size`` (h, w), padded to ``batch_shape``, scale
    factor 1; ``boxes`` absolute (x1, y1, x2, y2) in the input frame, in
    ``dtype``."""
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
        bboxes=boxes.to(dtype).reshape(-1, 4), labels=labels.long())
    return sample


def deterministic_keys(num_images: int) -> List[str]:
    """Loss keys that the golden README calls seed-independent (the same
    in the float32 and float64 files)."""
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


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of ``model``'s weights (float32 or float64)."""
    return next(model.parameters()).dtype


def total(loss) -> float:
    """A loss entry summed over its list, as the golden run reported it."""
    if isinstance(loss, (list, tuple)):
        return float(sum(v.sum() for v in loss))
    return float(loss)


def relative_differences(ours: Dict[str, float], gold: Dict[str, float],
                         keys: Sequence[str]) -> Dict[str, float]:
    """|ours - gold| / |gold| for each of ``keys`` (absolute where the
    golden value is 0, e.g. an accuracy of 0)."""
    return {
        key: abs(ours[key] - gold[key]) / (abs(gold[key]) or 1.0)
        for key in keys
    }


# (what, entries, identical, worst relative difference, its key) of each
# loss comparison with the golden outputs; tests/parity/conftest.py prints
# them at the end of the run, so that a change that moves them is visible.
FIGURES: List[Tuple[str, int, int, float, str]] = []


def record(what: str, diff: Dict[str, float]) -> None:
    """Keep the figures of one comparison (``relative_differences``) for
    the end-of-run summary."""
    worst = max(diff, key=diff.get)
    FIGURES.append((what, len(diff), sum(v == 0 for v in diff.values()),
                    diff[worst], worst))


def compare(ours: List[torch.Tensor], theirs: List) -> Dict:
    """Per class, pair our detections with the released ones (minimal
    largest coordinate difference; the order of near-tied scores is not
    compared) and report the worst pair and the detections not paired.

    Args:
        ours (list[Tensor]): Per class (n, 5) [x1, y1, x2, y2, score].
        theirs (list): Per class the released flat [x1, ..., score]
            values (or tensors, e.g. a second run of ours).

    Returns:
        dict: ``box`` (px) and ``score``: largest absolute differences of
        paired detections; ``moved``: detections in a class that has more
        of them on one side than on the other, and pairs more than SWAP_PX
        apart (another detection took the place).
    """
    worst = dict(box=0.0, score=0.0, moved=0)
    for mine, gold in zip(ours, theirs):
        gold = torch.as_tensor(gold, dtype=mine.dtype).reshape(-1, 5)
        worst['moved'] += abs(len(mine) - len(gold))
        if not len(mine) or not len(gold):
            continue
        cost = (mine[:, None, :4] - gold[None, :, :4]).abs().amax(-1)
        rows, cols = linear_sum_assignment(cost.numpy())
        errors = cost[rows, cols]
        same = errors <= SWAP_PX
        worst['moved'] += int((~same).sum())
        if not same.any():
            continue
        rows, cols = rows[same.numpy()], cols[same.numpy()]
        worst['box'] = max(worst['box'], float(errors[same].max()))
        worst['score'] = max(
            worst['score'], float((mine[rows, 4] - gold[cols, 4]).abs().max()))
    return worst


def over(worst: Dict, bound: Dict) -> Dict:
    """The entries of :func:`compare`'s ``worst`` beyond ``bound``."""
    return {key: value for key, value in worst.items() if value > bound[key]}
