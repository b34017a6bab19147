"""Where a Co-DETR training step reads tensors back to the host.

On a GPU every scalar read (``.item()``, ``bool(t)``, ``int(t)``,
``.tolist()``), every ``nonzero``-like op whose output size depends on the
data and every device-to-host copy waits for the GPU: the step becomes
bound by these synchronisations, not by arithmetic. The ops that cause them
are dispatched the same way on the CPU, so they can be counted on any
machine: :func:`count_host_reads` runs a step under ``torch.profiler``
with Python calls recorded and attributes each such op to the innermost
function of ``projects/codetr``, mmdet, mmcv, mmengine or torch that
called it (:func:`source_of`).

The counts depend on the data (numbers of boxes and positives), not on the
image size; times are not measured here. Not counted: device-to-host copies
(``.cpu()``, e.g. of the Hungarian cost matrices) are no-ops on the CPU, so
each of those adds one more wait per call on a GPU, and so do copies from
host memory (``new_tensor(list)``); mmcv's PyTorch deformable attention,
which runs only without CUDA, and ``F.one_hot``'s range check of its
labels, which it makes only on the CPU, are counted apart. On a GPU,
:func:`count_cuda_syncs` counts all of them with PyTorch's sync debug mode.
Used by ``tools/analysis/count_host_syncs.py``.
"""
import collections
import os.path as osp
import re
from typing import Sequence, Tuple

import torch

from . import REPO_ROOT
from .synthetic import fake_batch

# ops that make the host wait for the device (CUDA) when run on it
SYNC_OPS = {
    'aten::_local_scalar_dense': 'scalar read (.item(), bool, int, tolist)',
    'aten::nonzero': 'nonzero (data-dependent size)',
    'aten::masked_select': 'masked_select (data-dependent size)',
    'aten::unique': 'unique (data-dependent size)',
    'aten::_unique2': 'unique (data-dependent size)',
    'aten::repeat_interleave': 'repeat_interleave (data-dependent size)',
}
# a frame of one of these packages names where a read comes from
SOURCES = ('projects/codetr/', 'mmdet/', 'mmcv/', 'mmengine/', 'torch/')
# mmcv's PyTorch deformable attention runs only without CUDA (on a GPU its
# CUDA op reads nothing back): its reads are reported apart
CPU_ONLY = 'mmcv/ops/multi_scale_deform_attn.py'
# F.one_hot given the number of classes checks the labels' range on the
# CPU only (on CUDA a device assert does): reads under these ops are marked.
# Without a class count it reads the labels' maximum on CUDA too; every
# call in this plugin and in the mmdet code it runs passes the count.
CPU_ONLY_OPS = ('aten::one_hot', )
CPU_ONLY_MARK = ' [CPU only]'
FRAME = re.compile(r'^(?P<file>.*?)\((?P<line>\d+)\): (?P<func>.*)$')
# this package's frames (the counter, the step it runs) wrap the step: they
# are never where a read comes from, though they lie under projects/codetr/
OWN = 'projects/codetr/analysis/'


def build(config: str, device: str) -> torch.nn.Module:
    """The config's model with the random weights of its constructors (no
    backbone download; ``init_weights`` is skipped, its log is long and the
    counts depend on the data, not on the weights)."""
    from mmdet.registry import MODELS
    from mmengine.config import Config
    cfg = Config.fromfile(config, format_python_code=False)
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    return model.to(device).train()


def source_of(event) -> str:
    """The innermost Python function of projects/codetr, mmdet, mmcv or
    mmengine (else of torch) that the op was called from, as
    ``package/file:line (function)``, the line being where the function is
    defined: the profiler records Python calls as events named
    ``file(line): function`` around the ops they dispatch."""
    fallback = '(other)'
    while event is not None:
        match = FRAME.match(event.name)
        path = match['file'].replace('\\', '/') if match else ''
        if OWN in path:
            path = ''
        for source in SOURCES:
            if source in path:
                where = (f"{source}{path.split(source, 1)[1]}:"
                         f"{match['line']} ({match['func']})")
                if source != 'torch/':
                    return where
                if fallback == '(other)':
                    fallback = where
        event = event.cpu_parent
    return fallback


def count_host_reads(step) -> Tuple[collections.Counter, collections.Counter]:
    """Run ``step()`` once under the profiler and count its host reads.

    Returns:
        tuple[Counter, Counter]: Counts by op name and by (source, op name).
    """
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], with_stack=True) as prof:
        step()
    by_op = collections.Counter()
    by_line = collections.Counter()
    for event in prof.events():
        if event.name in SYNC_OPS:
            by_op[event.name] += 1
            where = source_of(event)
            if within_cpu_only_op(event):
                where += CPU_ONLY_MARK
            by_line[(where, event.name)] += 1
    return by_op, by_line


def within_cpu_only_op(event) -> bool:
    """Whether a read was made inside an op of :data:`CPU_ONLY_OPS`."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in CPU_ONLY_OPS:
            return True
        parent = parent.cpu_parent
    return False


def count_cuda_syncs(step) -> collections.Counter:
    """Run ``step()`` once on CUDA with PyTorch's sync debug mode and count
    every synchronising call by the source line that made it.

    Unlike :func:`count_host_reads` this sees what the CPU cannot show:
    copies from pageable host memory (``new_tensor(list)``,
    ``torch.tensor(..., device='cuda')``, ``.to('cuda')``), each of which
    PyTorch follows with a wait for the stream, and device-to-host copies.

    Returns:
        Counter: Counts by source (:func:`source_of`'s format, the line
        being the calling line here).
    """
    import traceback
    import warnings
    counts = collections.Counter()

    def record(message, *args, **kwargs) -> None:
        if 'synchroniz' not in str(message):
            return
        stack = [
            frame for frame in traceback.extract_stack()[:-1]
            if not frame.filename.endswith(('warnings.py', 'host_syncs.py'))
        ]
        # the innermost frame of the packages, else the innermost of all
        where = '(other)'
        if stack:
            frame = stack[-1]
            where = f'(other) {osp.basename(frame.filename)}:' \
                f'{frame.lineno} ({frame.name})'
        for frame in reversed(stack):
            path = frame.filename.replace('\\', '/')
            source = next((s for s in SOURCES[:-1] if s in path), None)
            if source:
                where = (f'{source}{path.split(source, 1)[1]}:'
                         f'{frame.lineno} ({frame.name})')
                break
        counts[where] += 1

    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings():
        # switching the mode on reports a synchronisation of its own the
        # first time in a process: not the step's, so not recorded
        warnings.simplefilter('ignore')
        torch.cuda.set_sync_debug_mode('warn')
        warnings.simplefilter('always')
        warnings.showwarning = record
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return counts


def report(config: str, size: Sequence[int], batch_size: int, boxes: int,
           top: int, device: str) -> None:
    """Count the host reads of one training step of ``config``'s model
    (forward, losses, backward) on a generated batch and print them, in all,
    by op and for the ``top`` source lines with the most.

    Args:
        config (str): Config file of the model.
        size (Sequence[int]): ``(h, w)`` of the generated images.
        batch_size (int): Images in the batch.
        boxes (int): Random ground-truth boxes per image.
        top (int): Source lines to list.
        device (str): Where the step runs, e.g. ``'cpu'``.
    """
    from mmdet.utils import register_all_modules
    register_all_modules()
    model = build(config, device)
    inputs, samples = fake_batch(model, batch_size, size, boxes,
                                 training=True)
    inputs = inputs.to(device)

    def step():
        loss, _ = model.parse_losses(model.loss(inputs, samples))
        loss.backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up: lazy initialisation outside the count
    by_op, by_line = count_host_reads(step)
    total = sum(by_op.values())
    cpu_only = sum(n for (where, _), n in by_line.items()
                   if CPU_ONLY in where or where.endswith(CPU_ONLY_MARK))
    print(f'{osp.relpath(config, REPO_ROOT)}: batch {batch_size} '
          f'x {size[0]}x{size[1]}, {boxes} boxes per image, '
          f'one training step (forward, losses, backward)')
    print(f'{total} host reads per step, {cpu_only} of them CPU only '
          '(mmcv\'s PyTorch deformable attention, F.one_hot\'s range '
          f'check): {total - cpu_only} on a GPU')
    for op, n in by_op.most_common():
        print(f'  {n:5d}  {SYNC_OPS[op]}')
    print(f'\ntop {top} source lines:')
    for (where, op), n in by_line.most_common(top):
        print(f'  {n:5d}  {op.split("::")[1]:24s} {where}')
    if torch.device(device).type == 'cuda':
        syncs = count_cuda_syncs(step)
        print(f'\nCUDA sync debug mode: {sum(syncs.values())} synchronising '
              'calls per step (host reads, data-dependent sizes and '
              'blocking host-device copies); top source lines:')
        for where, n in syncs.most_common(top):
            print(f'  {n:5d}  {where}')
