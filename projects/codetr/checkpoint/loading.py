"""Read checkpoints of the released Co-DETR code safely; tell their layout.

The released code (mmdet 2.x / mmcv-full 1.x) saves ``{'meta': ...,
'state_dict': ..., 'optimizer': ...}``, or a bare state dict when the file
went through mmdet's ``publish_model``. ``meta`` may hold objects of mmcv
1.x / mmdet 2.x classes (e.g. ``mmcv.utils.config.ConfigDict``) that do not
exist in this environment, and numpy scalars.

:func:`load_weights` reads such a file with ``torch.load(weights_only=True)``
only: torch's restricted unpickler builds tensors and plain containers, and
calls nothing that is not allowlisted. Before loading, the globals of the
file are listed (``torch.serialization.get_unsafe_globals_in_checkpoint``,
which reads the pickle without running it). Those under ``mmcv.``,
``mmdet.`` and ``mmengine.`` are mapped, for this one load, to an inert
stand-in that turns each such object into a plain ``OrderedDict``; numpy
and mmengine's logging objects are allowlisted by ``utils.compat``. Any other
global (``os.system``, ``subprocess.call``, ``builtins.eval``, ...) stops
the load before anything is unpickled. Only the tensors of the state dict
are returned; ``meta``, ``optimizer`` and the rest are dropped.

:func:`detect_layout` tells from the keys whether a state dict uses the
released names or codetr's, and :func:`check_load_from` stops
``tools/train.py`` / ``tools/test.py`` (through
``engine.cli_support.prepare_run``) before a released checkpoint is loaded
into a codetr model, where mmengine's non-strict loading would fill only the
modules whose names agree and keep random weights for the rest.
"""
import os.path as osp
import pickle
import re
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional

import torch

# Registers numpy and mmengine HistoryBuffer globals for weights_only loads.
from ..utils import compat  # noqa: F401
from .dab_detr_names import has_dab_detr_markers
from .mmdet3_names import has_mmdet3_markers
from .released_names import UnmappedKeysError, from_released, to_released
from .swin_names import MMDET as MMDET_SWIN
from .swin_names import swin_naming

RELEASED = 'released'
CODETR = 'codetr'
MMDET3 = 'mmdet3'
DAB_DETR = 'dab-detr'
UNKNOWN = 'unknown'
LAYOUT_NAMES = {
    RELEASED: 'released Co-DETR (mmdet 2.x)',
    CODETR: 'codetr (mmdet 3.x)',
    MMDET3: 'mmdet 3.x projects/CO-DETR',
    DAB_DETR: 'official DAB-Deformable-DETR (IDEA-Research/DAB-DETR)',
}

# Packages whose classes may appear in a checkpoint's metadata and are read
# as plain data. Only top-level package names: a checkpoint cannot choose a
# real function of these packages, every name below them gets the stand-in.
STAND_IN_PACKAGES = ('mmcv', 'mmdet', 'mmengine')
# Single classes read as plain data too: the training arguments that
# DETR-style checkpoints (DAB-DETR's) store under 'args'.
STAND_IN_CLASSES = ('argparse.Namespace', )
# The entry of a saved checkpoint that holds the weights: mmengine's, and
# DETR-style code's (DAB-DETR).
_WEIGHTS_KEYS = ('state_dict', 'model')
# mmengine's load_checkpoint strips the same prefix (its revise_keys).
_DDP_PREFIX = re.compile(r'^module\.')
CONVERTER = 'tools/convert_checkpoint.py'


class CheckpointError(ValueError):
    """A checkpoint cannot be used as asked; the message says why and how to
    fix it."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint needs globals that weights_only loading refuses."""


class ReleasedCheckpointError(CheckpointError):
    """A released-layout checkpoint was given where codetr weights are
    needed."""


class _InertStandIn:
    """Reads an object of an absent mmcv/mmdet/mmengine class as plain data.

    The unpickler creates objects of an allowlisted class with
    ``cls.__new__(cls, *args)`` (or calls it, for a reduce), fills dict
    subclasses with ``SETITEMS`` and sets attributes with ``BUILD``. torch
    accepts ``SETITEMS`` only on a real ``dict``/``OrderedDict`` and
    ``BUILD`` on an ``OrderedDict``, so the stand-in returns an empty
    ``OrderedDict``: a ``ConfigDict`` comes back with its items, any other
    object as an empty mapping with its attributes. Nothing of the original
    class runs.
    """

    def __new__(cls, *args, **kwargs) -> 'OrderedDict':  # noqa: D102
        return OrderedDict()


@dataclass
class LoadedWeights:
    """What :func:`load_weights` read.

    Attributes:
        state_dict: Tensors by name, ``module.`` prefix removed.
        layout: ``'released'``, ``'codetr'``, ``'mmdet3'``, ``'dab-detr'``
            or ``'unknown'``.
        dropped: Top-level entries of the file other than the weights
            (e.g. ``['meta', 'optimizer']``).
        stand_ins: Globals read through the inert stand-in.
        stripped_ddp_prefix: Whether keys began with ``module.``.
    """
    state_dict: 'OrderedDict[str, torch.Tensor]'
    layout: str
    dropped: List[str] = field(default_factory=list)
    stand_ins: List[str] = field(default_factory=list)
    stripped_ddp_prefix: bool = False


def _stand_in_allowed(name: str) -> bool:
    return name.split('.', 1)[0] in STAND_IN_PACKAGES or \
        name in STAND_IN_CLASSES


def _untrusted_globals(path: str) -> List[str]:
    """Globals of the file that torch's weights_only load does not allow.

    Read from the pickle's opcodes without running it. Files in torch's
    legacy (< 1.6, non-zip) format cannot be listed: for those the list is
    empty and the weights_only load itself refuses any unknown global.
    """
    if not zipfile.is_zipfile(path):
        return []
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (ValueError, RuntimeError) as err:  # e.g. a TorchScript archive
        raise CheckpointError(
            f'{path} is not a checkpoint written by torch.save: {err}. Give '
            f'the .pth file of a trained model.') from err


def _refusal(path: str, refused: Iterable[str]) -> str:
    names = ', '.join(f'`{name}`' for name in refused)
    return (
        f'refusing to load {path}: unpickling it would call {names}, which '
        f'can run arbitrary code; codetr reads checkpoints with '
        f'torch.load(weights_only=True) and substitutes plain data only for '
        f'the classes of {", ".join(STAND_IN_PACKAGES)}. A checkpoint of the '
        f'released Co-DETR code does not need these. If you trust the file '
        f'and know why it holds them, extract its weights yourself, e.g. '
        f'`torch.save({{"state_dict": torch.load("IN.pth", weights_only='
        f'False)["state_dict"]}}, "weights.pth")`, and convert that file.')


def _safe_torch_load(path: str, map_location, mmap: bool):
    """``torch.load(weights_only=True)`` with stand-ins for mmcv/mmdet
    classes; returns (object, stand-in names)."""
    unsafe = _untrusted_globals(path)
    refused = [name for name in unsafe if not _stand_in_allowed(name)]
    if refused:
        raise UnsafeCheckpointError(_refusal(path, refused))
    stand_ins = sorted(set(unsafe))
    allowed = [(_InertStandIn, name) for name in stand_ins]
    try:
        with torch.serialization.safe_globals(allowed):
            obj = torch.load(
                path,
                map_location=map_location,
                weights_only=True,
                mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        # e.g. a global pushed dynamically, which the listing cannot see,
        # or any global of a legacy-format file
        raise UnsafeCheckpointError(
            f'cannot read {path} with torch.load(weights_only=True): {err}\n'
            f'codetr never loads checkpoints with weights_only=False; if the '
            f'file is trusted, extract its state_dict with a plain torch.load '
            f'and save that alone.') from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(
            f'cannot read {path}: {err}. Is it a complete .pth file written '
            f'by torch.save? Download or copy it again.') from err
    return obj, stand_ins


def _split_weights(obj, path: str):
    """(state dict, names of dropped top-level entries)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f'{path} holds a {type(obj).__name__}, not a checkpoint dict: '
            f'expected {{"state_dict": {{name: tensor}}, ...}} or a bare '
            f'{{name: tensor}} state dict.')
    weights_key = next((k for k in _WEIGHTS_KEYS if k in obj), None)
    if weights_key is not None:
        weights = obj[weights_key]
        dropped = [str(k) for k in obj if k != weights_key]
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        weights, dropped = obj, []
    else:
        raise CheckpointError(
            f'{path} has no "state_dict" entry and is no bare state dict '
            f'(its top-level keys: {", ".join(map(str, list(obj)[:10]))}). '
            f'Give a checkpoint saved by mmdet/mmengine or a state dict.')
    if not isinstance(weights, Mapping):
        raise CheckpointError(
            f'the "state_dict" of {path} is a {type(weights).__name__}, not '
            f'a mapping of tensors; it is not a model checkpoint.')
    bad = [k for k, v in weights.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f'the state_dict of {path} holds non-tensor entries '
            f'({", ".join(map(str, bad[:5]))}); it is not a model state '
            f'dict.')
    return weights, dropped


def strip_ddp_prefix(state_dict: Mapping) -> 'OrderedDict[str, torch.Tensor]':
    """Remove the ``module.`` prefix that DDP-wrapped models save."""
    return OrderedDict(
        (_DDP_PREFIX.sub('', k), v) for k, v in state_dict.items())


def classify_keys(keys: Iterable[str]) -> Dict[str, List[str]]:
    """Sort state-dict keys by the layout they reveal.

    Returns:
        dict: ``'released'``: keys only the released code uses (e.g.
        ``...attentions.0...``, ``level_embeds``), ``'codetr'``: keys only
        codetr uses (``...self_attn...``, ``level_embed``), ``'foreign'``:
        keys of no Co-DETR module. Keys named alike in both layouts
        (backbone, neck, auxiliary heads) are in none.
    """
    found: Dict[str, List[str]] = {RELEASED: [], CODETR: [], 'foreign': []}
    for key in keys:
        as_codetr = as_released = None
        try:
            as_codetr = from_released(key)
        except UnmappedKeysError:
            pass
        try:
            as_released = to_released(key)
        except UnmappedKeysError:
            pass
        if as_codetr is None and as_released is None:
            found['foreign'].append(key)
        elif as_codetr is not None and as_codetr != key:
            found[RELEASED].append(key)
        elif as_released is not None and as_released != key:
            found[CODETR].append(key)
    return found


def detect_layout(state_dict: Iterable[str]) -> str:
    """The naming of a state dict (or of its keys).

    Args:
        state_dict: A state dict or its keys (a ``module.`` prefix is
            ignored).

    Returns:
        str: ``'dab-detr'`` if the keys are an official DAB-Deformable-DETR
        model's (query embeddings or decoder at the top level); ``'codetr'``
        if some key is named codetr's way and none the released code's;
        ``'mmdet3'`` (mmdet 3.x ``projects/CO-DETR``) if no key is codetr's
        and some key is one only mmdet 3.x writes (the denoising generator's
        label embedding), or the transformer has the released names and the
        backbone is mmdet's Swin; ``'released'`` for the other checkpoints
        with released names only; else ``'unknown'`` (no Co-DETR transformer
        keys, or namings mixed). Keys of no Co-DETR module do not decide;
        the conversion names them.
    """
    keys = [_DDP_PREFIX.sub('', k) for k in state_dict]
    if has_dab_detr_markers(keys):
        return DAB_DETR
    mmdet3 = has_mmdet3_markers(keys)
    # The marker keys may also be codetr names (its Co-DINO head can hold
    # mmdet's denoising generator): they must not count as codetr's here.
    found = classify_keys(k for k in keys if not has_mmdet3_markers([k]))
    if found[CODETR] and not found[RELEASED]:
        return CODETR
    if found[CODETR]:
        return UNKNOWN
    if mmdet3 or (found[RELEASED] and swin_naming(keys) == MMDET_SWIN):
        return MMDET3
    return RELEASED if found[RELEASED] else UNKNOWN


def load_weights(path: str,
                 map_location='cpu',
                 mmap: bool = False) -> LoadedWeights:
    """Read the weights of a released-code or codetr checkpoint safely.

    Args:
        path (str): Local ``.pth`` file: ``{'state_dict': ..., 'meta': ...,
            ...}`` or a bare state dict; keys may start with ``module.``.
        map_location: As for :func:`torch.load`. Defaults to ``'cpu'``.
        mmap (bool): Map the tensors instead of reading them (cheap when
            only the keys are needed); ignored for legacy-format files.

    Returns:
        LoadedWeights: The state dict and what was dropped.

    Raises:
        FileNotFoundError: ``path`` is no file.
        UnsafeCheckpointError: The file asks for a global other than the
            classes of mmcv/mmdet/mmengine and torch's and codetr's
            allowlists (nothing of it is unpickled then).
        CheckpointError: No state dict in the file.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'checkpoint not found: {path}. Give the path of an existing '
            f'.pth file.')
    obj, stand_ins = _safe_torch_load(path, map_location, mmap)
    weights, dropped = _split_weights(obj, path)
    stripped = any(_DDP_PREFIX.match(k) for k in weights)
    state_dict = strip_ddp_prefix(weights)
    return LoadedWeights(state_dict, detect_layout(state_dict), dropped,
                         stand_ins, stripped)


def converted_name(path: str) -> str:
    """Suggested output file for converting ``path`` to codetr."""
    stem, ext = osp.splitext(path)
    return f'{stem}_codetr{ext or ".pth"}'


def check_load_from(load_from: Optional[str]) -> None:
    """Stop before a released-layout checkpoint is loaded into codetr.

    mmengine loads ``load_from`` non-strictly: a checkpoint of the released
    code would fill the backbone, neck and auxiliary heads and leave the
    transformer random, with only a warning. Remote paths (``https://``,
    ``s3://``, ...) are not inspected: mmengine downloads those itself.

    Args:
        load_from (str | None): The config's ``load_from``.

    Raises:
        ReleasedCheckpointError: The file uses the released names; the
            message gives the conversion command.
        UnsafeCheckpointError: The file asks for unsafe globals.
    """
    if not load_from or '://' in load_from or not osp.isfile(load_from):
        return
    # mmap: only the keys are needed, not gigabytes of optimizer state.
    try:
        loaded = load_weights(load_from, mmap=True)
    except UnsafeCheckpointError:
        raise
    except CheckpointError:
        return  # not a state dict codetr recognises; mmengine reports it
    if loaded.layout not in (RELEASED, MMDET3, DAB_DETR):
        return
    examples = classify_keys(loaded.state_dict)[RELEASED] or [
        k for k in loaded.state_dict
        if has_mmdet3_markers([k]) or has_dab_detr_markers([k])
    ]
    origin = {
        RELEASED: 'the released Co-DETR code (mmdet 2.x parameter names',
        MMDET3: 'mmdet 3.x projects/CO-DETR (its parameter names',
        DAB_DETR: 'the official DAB-Deformable-DETR code (its parameter '
        'names'
    }[loaded.layout]
    raise ReleasedCheckpointError(
        f'{load_from} is a checkpoint of {origin}, e.g. `{examples[0]}`). '
        f'Loaded as it is, the transformer would keep random weights. '
        f'Convert it once, then use the converted file:\n'
        f'  python {CONVERTER} {load_from} {converted_name(load_from)}')
