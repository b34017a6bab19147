"""Helpers of the GPU suite (``tests/gpu``, ``make test-gpu``).

The tools run as a user runs them: a fresh interpreter started from the
repository root, with the repository and ``tests/`` (for the kill hook of
``tests/_crash_hook.py``) in front of the caller's ``PYTHONPATH``, which is
kept: on a machine set up from a wheelhouse it is what makes mmcv, mmdet
and the plugin importable. Measured differences are appended to the file
named by ``$CODETR_GPU_MEASUREMENTS`` (JSON lines) and summarised at the
end of the run (``tests/gpu/conftest.py``).
"""
import json
import os
import os.path as osp
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from test_tools import TINY_CONFIG, free_port, write_config  # noqa: F401

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TESTS = osp.join(REPO, 'tests')
MEASUREMENTS_ENV = 'CODETR_GPU_MEASUREMENTS'
# The 12 lines of pycocotools' summary, e.g. "Average Precision  (AP) @[
# IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.123".
COCO_LINE = re.compile(r'^ ?Average (Precision|Recall) .* = -?\d\.\d{3}$',
                       re.M)


def tool_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment of a tool run: repository and ``tests/`` first on
    ``PYTHONPATH``, this interpreter's ``python`` first on ``PATH`` (the
    ``dist_*.sh`` launchers call ``python``), a free ``PORT``."""
    env = dict(os.environ)
    paths = [REPO, TESTS] + [p for p in env.get('PYTHONPATH', '').split(':')
                             if p]
    env['PYTHONPATH'] = ':'.join(paths)
    env['PATH'] = osp.dirname(sys.executable) + ':' + env.get('PATH', '')
    # Several tools share the machine's cores while the suite runs.
    env.setdefault('OMP_NUM_THREADS', '2')
    env['PORT'] = str(free_port())
    env.update(extra or {})
    return env


def start(args: Sequence[str],
          env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
    """Start a tool from the repository root (output: stdout + stderr)."""
    return subprocess.Popen(list(args), cwd=REPO, env=tool_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(proc: subprocess.Popen, timeout: int = 400) -> Tuple[int, str]:
    """Wait for a tool started by :func:`start`; (exit code, output)."""
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def run(args: Sequence[str], env: Optional[Dict[str, str]] = None,
        timeout: int = 400) -> Tuple[int, str]:
    """Run a tool to the end; (exit code, output)."""
    return finish(start(args, env), timeout)


def make_shapes(root: Path, num_train: int, num_val: int,
                seed: int = 1) -> Path:
    """Generated shapes data of 64-96 px images under ``root``."""
    code, out = run([
        sys.executable, 'tools/generate_shapes_dataset.py', '--out',
        str(root), '--num-train', str(num_train), '--num-val',
        str(num_val), '--seed', str(seed), '--min-side', '64', '--max-side',
        '96', '--min-size', '16', '--workers', '1'
    ])
    assert code == 0, out
    return root


def tiny_config(path: Path, data_root: Path, extra: str = '') -> str:
    """``tests/configs/tiny_co_detr_shapes.py`` on ``data_root``, with the
    kill hook of ``tests/_crash_hook.py`` (inert unless
    ``CODETR_TEST_KILL_AT_ITER`` is set)."""
    return write_config(path, data_root, extra=textwrap.dedent("""\
        custom_imports = dict(imports=['projects.codetr', '_crash_hook'],
                              allow_failed_imports=False)
        custom_hooks = [dict(type='KillAtIterHook')]
        """) + extra)


def coco_tables(out: str) -> List[List[str]]:
    """Every COCO summary table (its 12 lines) printed in ``out``."""
    lines = [m.group(0).strip() for m in COCO_LINE.finditer(out)]
    return [lines[i:i + 12] for i in range(0, len(lines) - 11, 12)]


def train_losses(work_dir: Path) -> Dict[int, Dict[str, float]]:
    """Per training iteration the logged losses, from every run (timestamp
    folder) of ``work_dir``: ``{iteration: {name: value}}``."""
    losses = {}
    for path in sorted(work_dir.glob('*/vis_data/scalars.json')):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if 'loss' in record and 'iter' in record:
                losses[record['iter']] = {
                    k: v for k, v in record.items() if k.startswith('loss')
                }
    return losses


def record(name: str, **values) -> None:
    """Append a measured difference (and the bound it is checked against)
    to ``$CODETR_GPU_MEASUREMENTS``; printed at the end of the run."""
    path = os.environ.get(MEASUREMENTS_ENV)
    if not path:
        return
    values = {k: (float(v) if isinstance(v, (torch.Tensor, float)) else v)
              for k, v in values.items()}
    with open(path, 'a') as f:
        f.write(json.dumps(dict(name=name, **values)) + '\n')


def worst_compare(ours: Sequence, reference: Sequence) -> Dict:
    """The worst of ``test_codino_parity.compare`` over images: per image
    (or class list) the largest box (px) and score differences of paired
    detections and the detections that moved, over all of them."""
    from test_codino_parity import compare
    worst = dict(box=0.0, score=0.0, moved=0)
    for mine, theirs in zip(ours, reference):
        for key, value in compare(mine, theirs).items():
            worst[key] = max(worst[key], value)
    return worst


def weight_diffs(a: Dict[str, torch.Tensor],
                 b: Dict[str, torch.Tensor]) -> Dict:
    """How two state dicts with the same keys differ: the median and the
    largest absolute difference over all floating values, and the tensor of
    the largest (integer tensors must be equal)."""
    assert a.keys() == b.keys()
    diffs, worst, where = [], 0.0, ''
    for key, x in a.items():
        if not x.is_floating_point():
            assert torch.equal(x, b[key]), key
            continue
        diff = (x.double() - b[key].double()).abs().flatten()
        diffs.append(diff)
        if diff.numel() and float(diff.max()) > worst:
            worst, where = float(diff.max()), key
    return dict(median=float(torch.cat(diffs).median()), max=worst, at=where)
