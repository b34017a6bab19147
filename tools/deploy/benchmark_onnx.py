"""Images/s of ONNX Runtime vs PyTorch for Co-DETR, and their difference.

::

    python tools/deploy/benchmark_onnx.py [CONFIG] [--checkpoint CKPT]

Builds the model (random weights and no backbone download unless
``--checkpoint``), exports it with dynamic shapes, and times batch-1
inference at ``--shape`` (800 1333) after warm-up: ONNX Runtime (CUDA
provider when present, else CPU) against PyTorch fp32, and PyTorch fp16
autocast on a GPU. Prints one line per runtime and the largest box/score
difference of ONNX Runtime vs PyTorch fp32 on the same input. The GPU path
has not been run on the machines where this script was written.
"""
import argparse
import os.path as osp
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from _plugin import import_plugin  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
R50 = osp.join(REPO, 'configs', 'co_deformable_detr_r50_1x_coco.py')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', nargs='?', default=R50)
    parser.add_argument('--checkpoint', help='default: random weights')
    parser.add_argument('--shape', type=int, nargs=2, default=(800, 1333),
                        metavar=('H', 'W'))
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--no-tf32', action='store_true',
                        help='PyTorch on the GPU without TF32 convolutions '
                        'and matrix products (strict fp32, for comparing '
                        'against ONNX Runtime)')
    parser.add_argument('--threads', type=int, default=0,
                        help='CPU threads for both runtimes (0: default)')
    return parser.parse_args()


def timed(fn, warmup: int, runs: int) -> float:
    """Seconds per call (mean of ``runs`` after ``warmup`` calls)."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(runs):
        fn()
    return (time.perf_counter() - start) / runs


def main() -> None:
    args = parse_args()
    import_plugin()
    import onnxruntime as ort
    from mmengine.config import Config

    from projects.codetr.deploy import CoDETROnnxModel, export_onnx
    from projects.codetr.deploy.export import load_detector
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_tf32:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    cfg = Config.fromfile(args.config)
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    model = load_detector(cfg, args.checkpoint)
    h, w = args.shape
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
        if args.threads:
            opts.intra_op_num_threads = args.threads
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
                timed(lambda: session.run(None, feed), args.warmup,
                      args.runs)),
               (f'pytorch {torch.__version__} fp32 {device}',
                timed(torch_run, args.warmup, args.runs))]
    if device == 'cuda':
        results.append((f'pytorch {torch.__version__} fp16 autocast cuda',
                        timed(lambda: torch_run(True), args.warmup,
                              args.runs)))
    print(f'batch 1, {h}x{w}, {args.warmup} warm-up + {args.runs} timed '
          f'runs, torch threads {torch.get_num_threads()}')
    for name, sec in results:
        print(f'{name:48s} {1 / sec:7.3f} images/s ({sec * 1000:.0f} ms)')


if __name__ == '__main__':
    main()
