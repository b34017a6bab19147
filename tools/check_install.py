"""Check that the environment can train and test codetr; exit 1 if not.

Run by ``tools/install.sh`` as its last step, and useful on its own::

    python tools/check_install.py

Checks, each by doing the thing rather than by reading version strings:

* torch, mmengine, mmcv, mmdet import (mmdet itself rejects an mmcv outside
  ``>=2.0.0rc4, <2.2.0``);
* ``mmcv._ext`` exists and ``MultiScaleDeformableAttention``, ``nms`` and
  ``RoIAlign`` import from ``mmcv.ops``; ``nms`` runs on CPU;
* whether mmcv was compiled with CUDA. If torch sees a GPU, the CUDA
  deformable-attention kernel must exist and agree with mmcv's PyTorch
  reference implementation, because on GPU tensors mmcv always calls the
  kernel;
* ``projects.codetr`` imports, from the current working directory.
"""
import os.path as osp
import sys
import traceback
from typing import Callable, List

from _plugin import import_plugin

FAILURES: List[str] = []


def check(title: str, func: Callable[[], str]) -> None:
    """Run one check, print its outcome and remember a failure."""
    try:
        detail = func()
    except Exception as err:  # noqa: BLE001 - any failure is reported
        FAILURES.append(f'{title}: {type(err).__name__}: {err}')
        print(f'[FAIL] {title}: {type(err).__name__}: {err}')
        if '-v' in sys.argv:
            traceback.print_exc()
        return
    print(f'[ ok ] {title}: {detail}')


def versions() -> str:
    import mmcv
    import mmdet
    import mmengine
    import torch
    return (f'python {sys.version.split()[0]}, torch {torch.__version__}, '
            f'mmcv {mmcv.__version__}, mmengine {mmengine.__version__}, '
            f'mmdet {mmdet.__version__}')


def mmcv_ops() -> str:
    import mmcv._ext  # noqa: F401 - absent in a build without ops
    import torch
    from mmcv.ops import MultiScaleDeformableAttention, RoIAlign, nms  # noqa
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.],
                          [20., 20., 30., 30.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    _, keep = nms(boxes, scores, iou_threshold=0.5)
    if keep.tolist() != [0, 2]:
        raise RuntimeError(f'nms kept {keep.tolist()}, expected [0, 2]')
    return 'mmcv._ext present; nms runs on CPU'


def cuda_ops() -> str:
    import torch
    from mmcv.ops import get_compiling_cuda_version
    compiled = get_compiling_cuda_version()
    built_with_cuda = compiled != 'not available'
    if not torch.cuda.is_available():
        note = (f'mmcv compiled with CUDA {compiled}'
                if built_with_cuda else 'mmcv compiled for CPU only')
        return (f'{note}; no GPU visible to torch, so deformable attention '
                "uses mmcv's PyTorch implementation")
    if not built_with_cuda:
        raise RuntimeError(
            'torch sees a GPU but mmcv was compiled without CUDA, so the '
            'deformable-attention kernel is missing. Make nvcc available '
            '(CUDA_HOME) and rerun `bash tools/install.sh`; it then builds '
            'with FORCE_CUDA=1.')
    diff = _compare_ms_deform_attn()
    return (f'mmcv compiled with CUDA {compiled}; CUDA ms_deform_attn matches '
            f'the PyTorch reference (max abs diff {diff:.1e}) on '
            f'{torch.cuda.get_device_name()}')


def _compare_ms_deform_attn() -> float:
    """Run the CUDA kernel and the reference on the same small input."""
    import torch
    from mmcv.ops.multi_scale_deform_attn import (
        MultiScaleDeformableAttnFunction, multi_scale_deformable_attn_pytorch)
    gen = torch.Generator().manual_seed(0)
    bs, heads, dim, queries, levels, points = 1, 2, 8, 5, 2, 4
    shapes = torch.tensor([[6, 8], [3, 4]])
    starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
    value = torch.rand(
        bs, int(shapes.prod(1).sum()), heads, dim, generator=gen)
    locations = torch.rand(
        bs, queries, heads, levels, points, 2, generator=gen)
    weights = torch.rand(bs, queries, heads, levels, points, generator=gen)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    reference = multi_scale_deformable_attn_pytorch(value, shapes, locations,
                                                    weights)
    kernel = MultiScaleDeformableAttnFunction.apply(value.cuda(),
                                                    shapes.cuda(),
                                                    starts.cuda(),
                                                    locations.cuda(),
                                                    weights.cuda(), 64).cpu()
    diff = (kernel - reference).abs().max().item()
    if diff > 1e-4:
        raise RuntimeError(f'CUDA ms_deform_attn differs from the reference '
                           f'by {diff}')
    return diff


def plugin() -> str:
    import projects
    module = import_plugin()
    # A namespace package has no __file__; see tools/_plugin.py for why.
    kind = ('namespace package' if getattr(projects, '__file__', None) is None
            else f'REGULAR package at {projects.__file__}')
    where = osp.dirname(module.__file__)
    return f'imported from {where}; `projects` is a {kind}'


def main() -> int:
    check('versions', versions)
    check('mmcv ops', mmcv_ops)
    check('CUDA ops', cuda_ops)
    check('codetr plugin', plugin)
    if FAILURES:
        print(
            f'\n{len(FAILURES)} check(s) failed (rerun with -v for '
            'tracebacks):',
            file=sys.stderr)
        for failure in FAILURES:
            print(f'  - {failure}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
