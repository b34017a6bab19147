"""Let torch >= 2.6 load the checkpoints that mmengine 0.10.7 writes.

Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``: only
tensors, containers and an allowlist of globals may be unpickled.
mmengine 0.10.7 calls ``torch.load(filename, map_location=...)`` without
``weights_only`` (``mmengine/runner/checkpoint.py``, ``load_from_local`` and
the other ``CheckpointLoader`` schemes), but the checkpoints its ``Runner``
saves hold more than tensors, so ``runner.resume`` / ``--resume`` and
``load_checkpoint`` of such a file stop with an ``UnpicklingError``
(mmengine#1655). The extra objects, all under ``checkpoint['message_hub']``:

* ``mmengine.logging.HistoryBuffer`` objects (the logged scalars). A buffer
  pickles its statistics functions (``HistoryBuffer.min`` etc.), which
  pickle protocol 2 stores as ``getattr(HistoryBuffer, 'min')``.
* numpy arrays inside the buffers and numpy scalars in ``runtime_info``
  (e.g. ``eta``), i.e. ``numpy.ndarray``, ``numpy.dtype``, the array and
  scalar reconstructors and the concrete dtype classes.

Rather than turning ``weights_only`` off (which would let any checkpoint run
code), :func:`allow_mmengine_checkpoints` adds exactly these globals to
torch's allowlist with ``torch.serialization.add_safe_globals``. The one
risky global, ``builtins.getattr``, is mapped to :func:`_history_buffer_attr`,
which only returns the public methods of ``HistoryBuffer``. Importing
``projects.codetr`` applies it.
"""
import inspect
from typing import Any, Callable, List, Tuple, Union

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.utils import digit_version

SafeGlobal = Union[Callable, Tuple[Callable, str]]


def _history_buffer_attr(obj: Any, name: str) -> Callable:
    """Stand-in for ``builtins.getattr`` while unpickling with weights_only.

    Args:
        obj (Any): The object whose attribute the checkpoint asks for.
        name (str): The attribute name.

    Returns:
        Callable: ``getattr(HistoryBuffer, name)`` for a public function
        defined on ``HistoryBuffer`` (its statistics methods).

    Raises:
        pickle.UnpicklingError: For any other object or attribute, so that
            a crafted checkpoint cannot reach arbitrary attributes.
    """
    if (obj is HistoryBuffer and not name.startswith('_')
            and inspect.isfunction(vars(HistoryBuffer).get(name))):
        return getattr(HistoryBuffer, name)
    # Imported here: only needed on this failure path.
    from pickle import UnpicklingError
    raise UnpicklingError(
        f'codetr allows `getattr` in checkpoints only for the statistics '
        f'methods of mmengine HistoryBuffer, not getattr({obj!r}, {name!r}).')


def _numpy_globals() -> List[SafeGlobal]:
    """Globals that numpy arrays and scalars pickle to.

    numpy 2 moved ``numpy.core`` to ``numpy._core``. A checkpoint names the
    module of the numpy that wrote it, so both spellings are registered.
    """
    try:
        multiarray = np._core.multiarray  # numpy >= 2
    except AttributeError:
        multiarray = np.core.multiarray  # numpy 1.x
    safe: List[SafeGlobal] = [np.ndarray, np.dtype]
    for func in (multiarray._reconstruct, multiarray.scalar):
        for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
            safe.append((func, f'{module}.{func.__name__}'))
    # A dtype is rebuilt as ``np.dtype('f8')`` followed by ``__setstate__``
    # on the result, whose class (e.g. ``numpy.dtypes.Float64DType``) must be
    # allowlisted too. Only plain numeric and bool dtypes, not object/void.
    for code in np.typecodes['AllInteger'] + np.typecodes['AllFloat'] + '?':
        safe.append(type(np.dtype(code)))
    return safe


def mmengine_checkpoint_globals() -> List[SafeGlobal]:
    """All globals :func:`allow_mmengine_checkpoints` registers.

    Returns:
        list: Callables, or ``(callable, 'module.qualname')`` pairs where the
        name in the checkpoint differs from the callable's own.
    """
    return [HistoryBuffer,
            (_history_buffer_attr, 'builtins.getattr')] + _numpy_globals()


def allow_mmengine_checkpoints() -> None:
    """Allowlist mmengine checkpoint content for ``weights_only`` loading.

    Idempotent (torch keeps the allowlist as a set). Does nothing before
    torch 2.6: those versions do not default to weights_only, and before 2.6
    the allowlist takes no ``(callable, name)`` pairs.
    """
    if digit_version(torch.__version__) >= digit_version('2.6.0'):
        torch.serialization.add_safe_globals(mmengine_checkpoint_globals())


allow_mmengine_checkpoints()
