"""The GPU suite: tests marked ``gpu`` are skipped where torch sees no CUDA
device, so ``make test`` stays a CPU suite; ``make test-gpu`` runs them
(docs/testing.md). The measured differences the tests record
(``gpu_testing.record``) are printed at the end of the run."""
import json
import os

import pytest
import torch
from gpu_testing import MEASUREMENTS_ENV


def pytest_terminal_summary(terminalreporter) -> None:
    path = os.environ.get(MEASUREMENTS_ENV)
    if not path or not os.path.isfile(path):
        return
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        return
    terminalreporter.section(f'measured on {torch.cuda.get_device_name()}'
                             if torch.cuda.is_available() else 'measured')
    for row in sorted(rows, key=lambda r: r['name']):
        name = row.pop('name')
        values = ', '.join(
            f'{k}={v:.3g}' if isinstance(v, float) else f'{k}={v}'
            for k, v in row.items())
        terminalreporter.write_line(f'{name}: {values}')


@pytest.fixture(autouse=True)
def _fresh_cuda_settings():
    """Each test starts with torch's default float settings (TF32 for cuDNN
    convolutions, none for matrix products) whatever an earlier test set."""
    conv, matmul = (torch.backends.cudnn.allow_tf32,
                    torch.backends.cuda.matmul.allow_tf32)
    yield
    torch.backends.cudnn.allow_tf32 = conv
    torch.backends.cuda.matmul.allow_tf32 = matmul
