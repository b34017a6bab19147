"""Format a config's text once instead of at every use.

mmengine's ``Config.pretty_text`` runs yapf over the whole config each time
it is read: four times while a ``Runner`` starts (log, dump, visualizer,
message hub) and once more in every checkpoint. For the Co-DETR configs
(about 21k characters) each run takes about 2.6 s of CPU, i.e. ~10 s added
to every process start. The formatting is a pure function of the text, so
:func:`memoize_config_formatting` caches it.
"""
import functools
from typing import Callable, Dict, Tuple

_MAX_ENTRIES = 8  # a handful of distinct configs per process at most


def _memoized(format_code: Callable) -> Callable:
    cache: Dict[Tuple[str, str, str], tuple] = {}

    @functools.wraps(format_code)
    def cached(text: str, style_config=None, **kwargs) -> tuple:
        key = (text, repr(style_config), repr(sorted(kwargs.items())))
        if key not in cache:
            if len(cache) >= _MAX_ENTRIES:
                cache.pop(next(iter(cache)))  # oldest entry
            cache[key] = format_code(text, style_config=style_config,
                                     **kwargs)
        return cache[key]

    cached.memoized = True
    return cached


def memoize_config_formatting() -> None:
    """Make ``Config.pretty_text`` reuse earlier yapf results (idempotent)."""
    from mmengine.config import config as config_module
    if not getattr(config_module.FormatCode, 'memoized', False):
        config_module.FormatCode = _memoized(config_module.FormatCode)
