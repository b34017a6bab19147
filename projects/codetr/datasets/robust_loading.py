"""Image loading that names the file it cannot read.

mmcv's ``LoadImageFromFile`` fails on a missing, truncated or undecodable
image with a bare exception from inside a dataloader worker, which stops a
training run hours in. :class:`RobustLoadImageFromFile` either skips the
image (returns ``None``, so that mmengine's ``BaseDataset`` draws another
index) with a warning naming its path, or raises :class:`ImageLoadError`
naming the path, for evaluation where every image must count.

:func:`use_robust_image_loading` switches the ``LoadImageFromFile`` steps of
a config's pipelines to it: skipping in the training pipeline, raising in the
validation and test pipelines. The shipped configs declare it themselves
(configs/_base_/coco_detection.py); tools/test.py switches the test
pipeline, and tools/train.py the pipelines of configs that lack it.
"""
from typing import Any, Optional, Set

from mmcv.transforms import LoadImageFromFile
from mmdet.registry import TRANSFORMS
from mmengine.logging import print_log

_ON_ERROR = ('skip', 'raise')


class ImageLoadError(RuntimeError):
    """An image of the dataset cannot be read or decoded."""


@TRANSFORMS.register_module()
class RobustLoadImageFromFile(LoadImageFromFile):
    """``LoadImageFromFile`` that skips or reports unreadable images.

    Args:
        on_error: ``'skip'``: log a warning naming the file (once per file
            and process) and return ``None``, so that the dataset loads
            another image; valid only where the dataset refetches, i.e. not
            in ``test_mode``. ``'raise'``: raise :class:`ImageLoadError`
            naming the file.
        **kwargs: Arguments of mmcv's ``LoadImageFromFile``
            (``ignore_empty`` is not accepted: ``on_error`` replaces it).
    """

    def __init__(self, on_error: str = 'skip', **kwargs) -> None:
        if on_error not in _ON_ERROR:
            raise ValueError(f'on_error must be one of {_ON_ERROR}, got '
                             f'{on_error!r}')
        if kwargs.pop('ignore_empty', False):
            raise ValueError("RobustLoadImageFromFile replaces ignore_empty "
                             "with on_error='skip'")
        super().__init__(**kwargs)
        self.on_error = on_error
        self._reported: Set[str] = set()

    def transform(self, results: dict) -> Optional[dict]:
        """Load ``results['img_path']``; see the class docstring for errors.

        Returns:
            dict | None: ``results`` with ``img`` (H, W, C) uint8 (or float32),
            ``img_shape`` and ``ori_shape``; ``None`` for a skipped image.
        """
        path = results['img_path']
        try:
            return super().transform(results)
        except Exception as err:  # any backend or decoder error
            reason = f'{type(err).__name__}: {err}'.strip()
        if self.on_error == 'raise':
            raise ImageLoadError(
                f'Cannot read image {path} ({reason}). Replace or remove the '
                'file, or drop it from the annotation file.')
        if path not in self._reported:
            self._reported.add(path)
            print_log(
                f'Skipping unreadable image {path} ({reason}); another '
                'image is loaded in its place.',
                logger='current', level=30)  # logging.WARNING
        return None

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", on_error='{self.on_error}')"


def _is_plain_loader(step: Any) -> bool:
    return isinstance(step, dict) and step.get('type') in (
        'LoadImageFromFile', 'mmcv.LoadImageFromFile', LoadImageFromFile)


def _swap_pipeline(pipeline, on_error: str) -> int:
    """Switch the loaders of one pipeline (list of step dicts) in place."""
    swapped = 0
    for step in pipeline or []:
        if _is_plain_loader(step) and not step.get('ignore_empty', False):
            step['type'] = 'RobustLoadImageFromFile'
            step['on_error'] = on_error
            swapped += 1
        # Steps that hold sub-pipelines (e.g. TestTimeAug, RandomChoice).
        for key in ('transforms', 'pipeline'):
            subs = step.get(key) if isinstance(step, dict) else None
            if isinstance(subs, list):
                nested = subs if subs and isinstance(subs[0], list) else [subs]
                swapped += sum(_swap_pipeline(p, on_error) for p in nested)
    return swapped


def _swap_dataset(dataset, on_error: str) -> int:
    if not isinstance(dataset, dict):
        return 0
    swapped = _swap_pipeline(dataset.get('pipeline'), on_error)
    for key in ('dataset', 'datasets'):
        child = dataset.get(key)
        for ds in child if isinstance(child, list) else [child]:
            swapped += _swap_dataset(ds, on_error)
    return swapped


_ON_ERROR_OF_LOADER = {
    'train_dataloader': 'skip',
    'val_dataloader': 'raise',
    'test_dataloader': 'raise'
}


def use_robust_image_loading(cfg, loaders=tuple(_ON_ERROR_OF_LOADER)) -> int:
    """Use :class:`RobustLoadImageFromFile` in the dataloaders of ``cfg``.

    Training pipelines skip unreadable images; validation and test pipelines
    raise an error naming the file. Loaders that already have
    ``ignore_empty=True`` or another type are left alone.

    Args:
        cfg: The full config, modified in place.
        loaders: Keys of the dataloaders to switch (default: all three).

    Returns:
        int: Number of pipeline steps switched.
    """
    swapped = 0
    for loader in loaders:
        if cfg.get(loader):
            swapped += _swap_dataset(cfg[loader].get('dataset'),
                                     _ON_ERROR_OF_LOADER[loader])
    return swapped
