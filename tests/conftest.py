"""Shared fixtures.

The tests import the plugin as an installed package (``pip install -e .``,
done by ``tools/install.sh``); nothing here adds the repository to
``sys.path``, so a broken installation fails the tests instead of being
papered over.
"""
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# A fixture plugin (``pytest_plugins``) of the gradient tests, which also
# import its helpers: rewrite its asserts before that first import.
pytest.register_assert_rewrite('gradient_graph')


def pytest_collection_modifyitems(config, items) -> None:
    """Skip the tests marked ``gpu`` (in ``tests/gpu/`` and beside the CPU
    tests of CUDA-only paths) where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(
        reason='needs a CUDA GPU: run `make test-gpu` on a GPU machine '
        '(docs/testing.md)')
    for item in items:
        if 'gpu' in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope='session')
def repo_root() -> Path:
    """Root of the codetr repository."""
    return REPO_ROOT


@pytest.fixture
def run_python(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run Python code in a fresh interpreter, by default from ``tmp_path``.

    A fresh process sees the environment as a user's script would: no
    modules already imported by other tests, and a working directory
    outside the repository.

    Returns:
        Callable: ``run(code, cwd=None, flags=(), env=None)`` returning the
        finished process with text ``stdout``/``stderr``.
    """

    def run(code: str,
            cwd: Optional[Path] = None,
            flags: Sequence[str] = (),
            env: Optional[dict] = None) -> subprocess.CompletedProcess:
        full_env = dict(os.environ, **(env or {}))
        # PYTHONPATH would let the repository in by the back door.
        full_env.pop('PYTHONPATH', None)
        return subprocess.run([sys.executable, *flags, '-c', code],
                              cwd=str(cwd or tmp_path),
                              env=full_env,
                              capture_output=True,
                              text=True,
                              timeout=300)

    return run
