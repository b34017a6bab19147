"""The config switch ``tf32``: float32 matrix products in TF32 on GPUs.

PyTorch runs float32 matrix products (``nn.Linear``, ``matmul``) in full
float32 by default, while it runs cuDNN convolutions in TF32 (10-bit
mantissa inputs, float32 accumulation) on GPUs from Ampere on. Co-DETR's
transformers are mostly linear layers, so on those GPUs the default leaves
them on the slow float32 (SIMT) kernels. ``tf32 = True`` in a config (or
``--cfg-options tf32=True``) lets them use the TF32 tensor cores too.
It changes the numerics (a relative rounding of about 1e-3 per input), so
it is off by default: docs/performance.md gives its speed and its effect
on the parity bounds.
"""
import torch
from mmdet.registry import HOOKS
from mmengine.hooks import Hook


def matmul_precision(tf32: bool) -> str:
    """The ``torch.set_float32_matmul_precision`` value of ``tf32``."""
    return 'high' if tf32 else 'highest'


@HOOKS.register_module()
class MatmulTF32Hook(Hook):
    """Set float32 matrix products to TF32 or full float32 for a run.

    Reads the config's top-level ``tf32`` (False when absent) before the
    run (training, validation or testing alike) and restores the previous
    setting after it.
    """

    priority = 'VERY_HIGH'

    def __init__(self) -> None:
        self._previous = None

    def before_run(self, runner) -> None:
        tf32 = bool(runner.cfg.get('tf32', False))
        self._previous = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision(matmul_precision(tf32))
        runner.logger.info(
            f'float32 matrix products: {"TF32" if tf32 else "float32"} '
            f'(config key tf32={tf32})')

    def after_run(self, runner) -> None:
        if self._previous is not None:
            torch.set_float32_matmul_precision(self._previous)
            self._previous = None
