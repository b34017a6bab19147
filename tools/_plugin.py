"""Import the codetr plugin, or explain how to install it.

Configs load the plugin with ``custom_imports=dict(imports=['projects.codetr'],
allow_failed_imports=False)``. When that import fails, mmengine replaces the
cause with "Failed to import projects.codetr" and advice about
``PYTHONPATH``, which is the wrong fix. The scripts in ``tools/`` therefore
call :func:`import_plugin` before ``Config.fromfile``; the later
``custom_imports`` then finds the module already imported.

This module lives in ``tools/`` rather than in the plugin because it has to
work exactly when the plugin cannot be imported. It uses only the standard
library.
"""
import importlib
import importlib.util
import os.path as osp
from types import ModuleType

PLUGIN = 'projects.codetr'
REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
INSTALL_HINT = (
    f'from the codetr repository root ({REPO_ROOT}), with the target Python '
    f'environment active, run `bash tools/install.sh` (everything: '
    f'torch, mmcv with ops, mmdet, the plugin) or, when torch, mmcv 2.1.0 and '
    f'mmdet 3.3.0 are already installed, '
    f'`pip install -e . --no-build-isolation --no-deps`.')


class PluginImportError(ImportError):
    """``projects.codetr`` cannot be imported; the message says why."""


def _shadowing_projects_package() -> str:
    """Path of a regular ``projects`` package that hides the plugin, or ''.

    ``projects`` must stay a namespace package (no ``__init__.py``) so that
    the plugin and e.g. mmdetection's ``projects/`` can be imported side by
    side. A ``projects/__init__.py`` found first on ``sys.path`` (often the
    current directory) ends the search for other ``projects`` directories.
    """
    try:
        spec = importlib.util.find_spec('projects')
    except (ImportError, ValueError):
        return ''
    if spec is not None and spec.origin not in (None, 'namespace'):
        return spec.origin
    return ''


def missing_plugin_message() -> str:
    """The explanation raised when ``projects.codetr`` is not importable."""
    message = f'Cannot import the codetr plugin `{PLUGIN}`. '
    shadow = _shadowing_projects_package()
    if shadow:
        message += (
            f'A regular package named `projects` ({shadow}) hides it: '
            '`projects` must be a namespace package. Run from another '
            'directory, or remove that `projects/__init__.py`. If the plugin '
            'is not installed either, install it: ')
    else:
        message += 'It is not installed in this Python environment. To fix: '
    return message + INSTALL_HINT


def import_plugin(name: str = PLUGIN) -> ModuleType:
    """Import the plugin so that its modules are registered in mmdet.

    Args:
        name (str): Module to import. Defaults to ``'projects.codetr'``.

    Returns:
        ModuleType: The imported module.

    Raises:
        PluginImportError: If the plugin itself cannot be found (the
            message says how to install it) or one of its dependencies fails
            to import (the message names it; the original error is chained).
    """
    try:
        return importlib.import_module(name)
    except ImportError as err:
        # `err.name` is the module that was not found; only when that is the
        # plugin or its `projects` parent is the plugin itself missing.
        missing = err.name or ''
        if isinstance(err, ModuleNotFoundError) and (
                name == missing or name.startswith(missing + '.')):
            raise PluginImportError(missing_plugin_message()) from err
        if missing == 'mmcv._ext':
            cause = ('mmcv is installed without its compiled ops '
                     '(mmcv._ext), a known result of `pip install mmcv` with '
                     'build isolation')
        else:
            cause = f'a dependency failed to import: {err}'
        raise PluginImportError(
            f'`{name}` is installed but {cause}. Rerun '
            f'`bash tools/install.sh` from {REPO_ROOT}: it is safe to rerun, '
            f'checks each dependency and rebuilds mmcv 2.1.0 with its ops '
            f'where needed.') from err
