"""Build a ``CoDETR`` from a config and checkpoint and export it to ONNX.

The TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) is used:
it traces tensor sizes as graph values (``Shape`` ops), so the padded image
size, the batch size and every pyramid level's (h, w) stay dynamic, and it
needs no extra package. Deformable attention exports as ``GridSample``
(ONNX opset 16 or later); no mmcv custom op is emitted.
"""
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .onnx_model import CoDETROnnxModel

MIN_OPSET = 16  # GridSample
DEFAULT_OPSET = 17
INPUT_NAMES = ('inputs', 'img_sizes')
OUTPUT_NAMES = ('boxes', 'scores', 'labels')
DYNAMIC_AXES = {
    'inputs': {0: 'batch', 2: 'height', 3: 'width'},
    'img_sizes': {0: 'batch'},
    'boxes': {0: 'batch'},
    'scores': {0: 'batch'},
    'labels': {0: 'batch'},
}
_REGISTERED = set()


def check_opset(opset: int) -> None:
    """Raise a ``ValueError`` for an opset without ``GridSample``."""
    if opset < MIN_OPSET:
        raise ValueError(
            f'opset {opset} is too old: multi-scale deformable attention '
            f'exports as GridSample, which needs ONNX opset >= {MIN_OPSET}. '
            f'Use --opset {DEFAULT_OPSET} (the default).')


def _linspace(g, start, end, steps, dtype, layout, device, pin_memory):
    """``aten::linspace`` that is right for ``steps == 1`` too.

    torch's symbolic divides by ``steps - 1``, which gives NaN for a
    feature level of height or width 1 (mmdet builds the encoder reference
    points and the two-stage proposals with ``linspace(a, b, h)``). The
    divisor is ``max(steps - 1, 1)`` here; the values are unchanged
    otherwise.
    """
    from torch.onnx import symbolic_helper as helper
    from torch.onnx import symbolic_opset9 as op9
    one = g.op('Constant', value_t=torch.tensor(1, dtype=torch.int64))
    steps = g.op('Cast', steps, to_i=7)  # int64
    count = g.op('Max', g.op('Sub', steps, one), one)
    step = op9.div(g, op9.sub(g, end, start), count)
    index = helper._arange_helper(g, steps, None)
    return op9.add(g, op9.mul(g, index, step), start)


def register_symbolics(opset: int) -> None:
    """Register :func:`_linspace` for ``opset`` (once per process)."""
    if opset not in _REGISTERED:
        torch.onnx.register_custom_op_symbolic('aten::linspace', _linspace,
                                               opset)
        _REGISTERED.add(opset)


def load_detector(cfg, checkpoint: Optional[str]) -> nn.Module:
    """Build ``cfg.model`` in eval mode and load ``checkpoint`` strictly.

    Args:
        cfg (Config): A Co-DETR config (plugin imported).
        checkpoint (str, optional): ``.pth`` file; None keeps the random
            initialisation (benchmarks).

    Raises:
        ValueError: ``eval_module`` is not ``'detr'``, or the checkpoint's
            keys or shapes do not match the config's model.
    """
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.runner import load_checkpoint

    from .onnx_model import check_exportable
    register_all_modules()
    model = MODELS.build(cfg.model)
    check_exportable(model)
    if checkpoint is None:
        model.init_weights()
        return model.eval()
    try:
        load_checkpoint(model, checkpoint, map_location='cpu', strict=True,
                        logger='silent')
    except RuntimeError as err:  # missing/unexpected keys, shape mismatch
        raise ValueError(
            f'checkpoint {checkpoint} does not match the config\'s model '
            f'(strict loading):\n{err}\nUse the config the checkpoint was '
            'trained with; convert a checkpoint of the released mmdet 2.x '
            'code first with tools/convert_checkpoint.py.') from err
    return model.eval()


def example_inputs(model: nn.Module, batch: int,
                   shape: Sequence[int]) -> Tuple[Tensor, Tensor]:
    """Random normalised images (batch, 3, H, W) and their sizes."""
    height, width = shape
    param = next(model.parameters())
    inputs = torch.randn(batch, 3, height, width, dtype=param.dtype)
    sizes = torch.tensor([[height, width]] * batch, dtype=torch.int64)
    return inputs, sizes


def export_onnx(model: nn.Module,
                out_file: str,
                opset: int = DEFAULT_OPSET,
                dynamic: bool = True,
                shape: Sequence[int] = (800, 1333),
                batch: int = 1) -> CoDETROnnxModel:
    """Export the inference graph of a ``CoDETR`` to ``out_file``.

    Graph inputs: ``inputs`` (B, 3, H, W) float32 preprocessed images,
    ``img_sizes`` (B, 2) int64 valid (h, w). Outputs: ``boxes`` (B, k, 4)
    (x1, y1, x2, y2) input pixels, ``scores`` (B, k), ``labels`` (B, k)
    int64. With ``dynamic``, B, H and W are dynamic axes.

    Args:
        model (nn.Module): ``CoDETR`` in eval mode on the CPU.
        out_file (str): Path of the ``.onnx`` file.
        opset (int): ONNX opset, at least 16.
        dynamic (bool): Dynamic batch and image size.
        shape (Sequence[int]): (H, W) of the example input traced.
        batch (int): Batch size of the example input.

    Returns:
        CoDETROnnxModel: The wrapper that was exported.
    """
    check_opset(opset)
    register_symbolics(opset)
    wrapper = CoDETROnnxModel(model).eval()
    args = example_inputs(model, batch, shape)
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            args,
            out_file,
            dynamo=False,
            opset_version=opset,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=DYNAMIC_AXES if dynamic else None)
    return wrapper
