"""Images/s of ONNX Runtime vs PyTorch for Co-DETR, and their difference.

Used by ``tools/deploy/benchmark_onnx.py``. The GPU path has not been run on
the machines where this was written.
"""
import os.path as osp
import tempfile
import time
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .export import export_onnx, load_detector
from .onnx_model import CoDETROnnxModel


def timed(fn: Callable[[], object], warmup: int, runs: int) -> float:
    """Seconds per call (mean of ``runs`` after ``warmup`` calls)."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(runs):
        fn()
    return (time.perf_counter() - start) / runs


def compare_runtimes(config: str, checkpoint: Optional[str],
                     shape: Sequence[int], warmup: int, runs: int,
                     no_tf32: bool, threads: int) -> None:
    """Export ``config``'s model with dynamic shapes, then print the largest
    difference of ONNX Runtime's outputs to PyTorch fp32 ones on one random
    input and the images/s of each runtime at batch 1.

    Args:
        config (str): Config file of the model.
        checkpoint (str, optional): Its weights; None: random weights.
        shape (Sequence[int]): ``(h, w)`` of the input.
        warmup (int): Untimed calls before the timed ones.
        runs (int): Timed calls.
        no_tf32 (bool): PyTorch on the GPU without TF32.
        threads (int): CPU threads of both runtimes (0: their defaults).
    """
    import onnxruntime as ort
    from mmengine.config import Config
    if threads:
        torch.set_num_threads(threads)
    if no_tf32:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    cfg = Config.fromfile(config)
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    model = load_detector(cfg, checkpoint)
    h, w = shape
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(1, 3, h, w, generator=gen)
    sizes = torch.tensor([[h, w]])
    with tempfile.TemporaryDirectory() as tmp:
        path = osp.join(tmp, 'model.onnx')
        start = time.perf_counter()
        export_onnx(model, path, dynamic=True, shape=(h, w))
        print(f'export: {time.perf_counter() - start:.1f} s')
        providers = ['CPUExecutionProvider']
        if 'CUDAExecutionProvider' in ort.get_available_providers():
            providers.insert(0, 'CUDAExecutionProvider')
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        session = ort.InferenceSession(path, opts, providers=providers)
    feed = {'inputs': inputs.numpy(), 'img_sizes': sizes.numpy()}
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    wrapper = CoDETROnnxModel(model.to(device)).eval()
    x, s = inputs.to(device), sizes.to(device)

    def torch_run(fp16: bool = False):
        with torch.no_grad(), torch.autocast(device, torch.float16,
                                             enabled=fp16):
            out = wrapper(x, s)
        if device == 'cuda':
            torch.cuda.synchronize()
        return out

    # ORT vs PyTorch fp32 on the same input
    boxes, scores, labels = session.run(None, feed)
    ref = [t.float().cpu().numpy() for t in torch_run()]
    print(f'ORT vs PyTorch fp32 max |diff|: boxes '
          f'{np.abs(boxes - ref[0]).max():.2e} px, scores '
          f'{np.abs(scores - ref[1]).max():.2e}, labels equal '
          f'{(labels == ref[2]).mean() * 100:.0f}%')
    provider = session.get_providers()[0]
    results = [(f'onnxruntime {ort.__version__} {provider}',
                timed(lambda: session.run(None, feed), warmup, runs)),
               (f'pytorch {torch.__version__} fp32 {device}',
                timed(torch_run, warmup, runs))]
    if device == 'cuda':
        results.append((f'pytorch {torch.__version__} fp16 autocast cuda',
                        timed(lambda: torch_run(True), warmup, runs)))
    print(f'batch 1, {h}x{w}, {warmup} warm-up + {runs} timed runs, '
          f'torch threads {torch.get_num_threads()}')
    for name, sec in results:
        print(f'{name:48s} {1 / sec:7.3f} images/s ({sec * 1000:.0f} ms)')
