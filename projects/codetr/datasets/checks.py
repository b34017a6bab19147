"""Checks of a config's datasets that run before the runner is built.

A wrong path, a class list that does not match the annotation file or the
model, or a malformed annotation otherwise shows up minutes later as a crash
deep inside a dataloader worker, or silently as a model trained on nothing.
:func:`check_config_datasets` finds these with the config alone and raises one
:class:`DataCheckError` that names every problem, the path or setting
involved, and what to change.

Only COCO-style datasets (``CocoDataset`` and subclasses, possibly inside
dataset wrappers) on the local file system are inspected; other datasets and
remote storage are skipped.
"""
import json
import os.path as osp
from dataclasses import dataclass
from typing import (Any, Callable, Dict, Iterator, List, Optional, Sequence,
                    Tuple)

from .annotation_report import AnnotationReport, inspect_coco_annotations

DATALOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
_EVALUATORS = dict(val_dataloader='val_evaluator',
                   test_dataloader='test_evaluator')
# Wrapper datasets hold their children under these keys.
_CHILD_KEYS = ('dataset', 'datasets')
_GENERATE_HINT = (
    'To train on the synthetic shapes data, generate it with '
    '`python tools/generate_shapes_dataset.py --out {root} --num-train 2000 '
    '--num-val 200`; for your own COCO-style data, point the config to it, '
    'e.g. `--cfg-options {options}`.')


def _hint(root: str, keys: Sequence[str]) -> str:
    options = ' '.join(f'{k}.data_root=/path/to/data/' for k in keys)
    return _GENERATE_HINT.format(root=root or 'data/shapes/', options=options)


class DataCheckError(ValueError):
    """A dataset configuration or annotation file cannot be used as is."""


@dataclass
class DatasetEntry:
    """One leaf dataset of a dataloader config.

    Attributes:
        key: Dotted config key of the dataset dict, e.g.
            ``'train_dataloader.dataset'``.
        cfg: The dataset config dict.
        classes: Class names the dataset selects (config ``metainfo`` or the
            dataset class's default).
        classes_from: Where ``classes`` came from, for messages.
    """
    key: str
    cfg: Any
    classes: Tuple[str, ...]
    classes_from: str

    @property
    def data_root(self) -> str:
        return self.cfg.get('data_root') or ''

    def resolve(self, path: Optional[str]) -> Optional[str]:
        """Join ``path`` with ``data_root`` the way mmengine's BaseDataset
        does (absolute paths and URLs are kept)."""
        if not path or osp.isabs(path) or '://' in path or not self.data_root:
            return path
        return osp.join(self.data_root, path)

    @property
    def ann_file(self) -> Optional[str]:
        return self.resolve(self.cfg.get('ann_file'))

    @property
    def img_dir(self) -> Optional[str]:
        prefix = (self.cfg.get('data_prefix') or {}).get('img', '')
        return self.resolve(prefix) if prefix else (self.data_root or None)

    @property
    def is_local(self) -> bool:
        backend = (self.cfg.get('backend_args') or {}).get('backend', 'local')
        paths = [self.data_root, self.cfg.get('ann_file') or '']
        return backend == 'local' and not any('://' in p for p in paths)


def _dataset_class(type_: Any):
    """The dataset class named by a config ``type`` (name or class)."""
    if not isinstance(type_, str):
        return type_
    import mmdet.datasets  # noqa: F401  (fills the registry)
    from mmdet.registry import DATASETS
    return DATASETS.get(type_)


def iter_datasets(cfg, dataloader: str) -> Iterator[DatasetEntry]:
    """Yield the COCO-style leaf datasets of one dataloader config.

    Args:
        cfg: The full config.
        dataloader: ``'train_dataloader'``, ``'val_dataloader'`` or
            ``'test_dataloader'``.
    """
    loader = cfg.get(dataloader)
    if not loader or not loader.get('dataset'):
        return
    stack = [(f'{dataloader}.dataset', loader['dataset'])]
    while stack:
        key, ds = stack.pop()
        children = [(k, ds[k]) for k in _CHILD_KEYS if ds.get(k)]
        if children:
            for k, child in children:
                if isinstance(child, (list, tuple)):
                    stack.extend((f'{key}.{k}.{i}', c)
                                 for i, c in enumerate(child))
                else:
                    stack.append((f'{key}.{k}', child))
            continue
        cls = _dataset_class(ds.get('type'))
        from mmdet.datasets import CocoDataset
        if cls is None or not issubclass(cls, CocoDataset):
            continue
        classes = (ds.get('metainfo') or {}).get('classes')
        if classes:
            source = f'{key}.metainfo.classes'
        else:
            classes = cls.METAINFO['classes']
            source = (f'the default classes of {cls.__name__} (the config '
                      f'sets no {key}.metainfo)')
        yield DatasetEntry(key, ds, tuple(classes), source)


def find_num_classes(node: Any,
                     prefix: str = 'model') -> List[Tuple[str, int]]:
    """Every ``num_classes`` setting in a (model) config, with its key.

    Args:
        node: A config dict, list or value.
        prefix: Dotted key of ``node``.

    Returns:
        list[tuple[str, int]]: ``(dotted_key, value)`` pairs, e.g.
        ``('model.roi_head.0.bbox_head.num_classes', 80)``.
    """
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == 'num_classes' and isinstance(value, int):
                found.append((f'{prefix}.{key}', value))
            else:
                found.extend(find_num_classes(value, f'{prefix}.{key}'))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            found.extend(find_num_classes(value, f'{prefix}.{i}'))
    return found


def check_num_classes(cfg, entry: DatasetEntry) -> Optional[str]:
    """Compare the model's ``num_classes`` settings with the dataset."""
    settings = find_num_classes(cfg.get('model') or {})
    wrong = [(k, v) for k, v in settings if v != len(entry.classes)]
    if not wrong:
        return None
    listed = ', '.join(f'{k}={v}' for k, v in wrong)
    n = len(entry.classes)
    if isinstance(cfg.get('num_classes'), int):
        fix = (f'set `num_classes = {n}` at the top of your config file (it '
               'feeds every head; `--cfg-options num_classes=...` cannot '
               'change it, because the model dict has already read it when '
               'the options are applied)')
    else:
        options = ' '.join(f'{k}={n}' for k, _ in wrong)
        fix = (f'set {"it" if len(wrong) == 1 else "each of them"} to {n} '
               f'in the config, or on the command line: `--cfg-options '
               f'{options}`')
    return (f'The model predicts a different number of classes than '
            f'{entry.key} has: {listed}, but the dataset has {n} classes '
            f'{list(entry.classes)} (from {entry.classes_from}). To fix it, '
            f'{fix}.')


def check_categories(coco: dict, entry: DatasetEntry) -> List[str]:
    """Compare the file's category names with the dataset's classes.

    Returns:
        list[str]: Error messages (empty when the names fit).
    """
    names = [c.get('name') for c in coco.get('categories') or []]
    where = f'{entry.ann_file} (used by {entry.key})'
    if not names:
        return [f"{where} has no 'categories'; COCO files must list them"]
    errors = []
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        errors.append(f'{where} has duplicate category names {dup}; each '
                      'name must be unique')
    missing = [c for c in entry.classes if c not in names]
    selected = [n for n in names if n in entry.classes]
    fix = (f'set `{entry.key}.metainfo=dict(classes=(...))` to the file\'s '
           'names (same order), or use the annotation file made for these '
           'classes')
    if missing:
        errors.append(
            f'The classes of {entry.key} do not match the categories of '
            f'{where}: {missing} are not in the file.\n'
            f'  classes ({entry.classes_from}): {list(entry.classes)}\n'
            f'  categories in the file: {names}\n  To fix it, {fix}.')
    elif selected != list(entry.classes):
        errors.append(
            f'The classes of {entry.key} are in a different order than the '
            f'categories of {where}; mmdet numbers labels in file order, so '
            f'class names would be attached to the wrong labels.\n'
            f'  classes ({entry.classes_from}): {list(entry.classes)}\n'
            f'  categories in the file: {names}\n  To fix it, {fix}.')
    return errors


def _load_json(path: str, entry: DatasetEntry) -> Tuple[Optional[dict], str]:
    try:
        with open(path) as f:
            return json.load(f), ''
    except (OSError, ValueError) as e:
        return None, (f'Cannot read the annotation file {path} of '
                      f'{entry.key}: {type(e).__name__}: {e}')


def _missing_root_errors(entries: Sequence[DatasetEntry]) -> List[str]:
    """One error per missing ``data_root``, naming every dataset using it."""
    missing: Dict[str, List[str]] = {}
    for entry in entries:
        root = entry.data_root
        if root and not osp.isdir(root):
            missing.setdefault(root, []).append(entry.key)
    return [f'Dataset folder not found: {root} (data_root of '
            f'{", ".join(keys)}; relative paths start at '
            f'{osp.abspath(".")}). {_hint(root, keys)}'
            for root, keys in missing.items()]


def _check_paths(entry: DatasetEntry) -> List[str]:
    """Errors for a missing annotation file or image folder."""
    root = entry.data_root
    hint = _hint(root, [entry.key])
    errors = []
    if not entry.ann_file or not osp.isfile(entry.ann_file):
        errors.append(f'Annotation file not found: {entry.ann_file} '
                      f'({entry.key}.ann_file, joined to data_root '
                      f'{root!r}). {hint}')
    if entry.img_dir and not osp.isdir(entry.img_dir):
        errors.append(f'Image folder not found: {entry.img_dir} '
                      f'({entry.key}.data_prefix.img, joined to data_root '
                      f'{root!r}). {hint}')
    return errors


def _check_image_files(coco: dict, entry: DatasetEntry, train: bool,
                       warn: Callable[[str], None]) -> List[str]:
    """Missing image files: an error when evaluating or when none exist; a
    warning when training (the loader skips them)."""
    files = [img['file_name'] for img in coco.get('images', [])
             if isinstance(img, dict) and 'file_name' in img]
    missing = [f for f in files
               if not osp.isfile(osp.join(entry.img_dir or '', f))]
    if not missing:
        return []
    text = (f'{len(missing)} of {len(files)} images listed in '
            f'{entry.ann_file} are missing under {entry.img_dir} '
            f'({entry.key}.data_prefix.img), e.g. '
            f'{[osp.join(entry.img_dir or "", f) for f in missing[:3]]}')
    if len(missing) == len(files):
        return [f'{text}. Check data_root and data_prefix.img.']
    if not train:
        return [f'{text}. Evaluation needs every image.']
    warn(f'{text}; training skips them.')
    return []


def _check_evaluator_files(cfg, key: str) -> List[str]:
    """Errors for an evaluator ``ann_file`` (e.g. CocoMetric's) that does
    not exist."""
    evaluators = cfg.get(key) or []
    if isinstance(evaluators, dict):
        evaluators = [evaluators]
    errors = []
    for i, metric in enumerate(evaluators):
        path = metric.get('ann_file')
        if path and '://' not in path and not osp.isfile(path):
            where = key if len(evaluators) == 1 else f'{key}.{i}'
            errors.append(
                f'Annotation file of the metric not found: {path} '
                f'({where}.ann_file). Point it to the ground truth of the '
                f'evaluated split, e.g. `--cfg-options {where}.ann_file='
                '/path/to/instances_val.json`.')
    return errors


def check_dataset(cfg, entry: DatasetEntry, train: bool,
                  warn: Callable[[str], None]
                  ) -> Tuple[List[str], Optional[AnnotationReport]]:
    """All checks of one dataset.

    Returns:
        tuple: Error messages and the annotation report (``None`` if the
        file could not be read).
    """
    errors = _check_paths(entry)
    if errors:
        return errors, None
    coco, error = _load_json(entry.ann_file, entry)
    if coco is None:
        return [error], None
    errors = check_categories(coco, entry)
    num_classes_error = check_num_classes(cfg, entry)
    if num_classes_error:
        errors.append(num_classes_error)
    report = inspect_coco_annotations(coco, entry.ann_file, entry.classes)
    errors += [f'{entry.ann_file} ({entry.key}): {e}' for e in report.errors]
    errors += _check_image_files(coco, entry, train, warn)
    return errors, report


def _log_report(report: AnnotationReport, loader: str,
                log: Callable[[str], None],
                warn: Callable[[str], None]) -> None:
    """Summary line, dropped boxes and label map of one annotation file."""
    log(report.summary())
    for reason in sorted(report.dropped):
        warn(f'{report.ann_file}: CocoDataset drops '
             f'{report.describe(reason)}')
    note = report.label_map_note()
    if note:
        log(note)
    if report.num_boxes == 0 and loader == 'train_dataloader':
        warn(f'{report.ann_file} gives no training boxes at all.')


def check_config_datasets(cfg, dataloaders: Sequence[str] = DATALOADERS,
                          log: Callable[[str], None] = print,
                          warn: Optional[Callable[[str], None]] = None
                          ) -> List[AnnotationReport]:
    """Check every COCO-style dataset of the given dataloaders.

    Args:
        cfg: The full config (after ``--cfg-options``).
        dataloaders: Which dataloader configs to check.
        log: Receives one summary line per annotation file.
        warn: Receives warnings (dropped boxes, missing training images);
            defaults to ``log``.

    Returns:
        list[AnnotationReport]: One report per checked annotation file.

    Raises:
        DataCheckError: Listing every problem found, each with the path or
            setting involved and the fix.
    """
    warn = warn or log
    entries = []
    for loader in dataloaders:
        for entry in iter_datasets(cfg, loader):
            if entry.is_local:
                entries.append((loader, entry))
            else:
                log(f'{entry.key}: remote storage, dataset checks skipped')
    errors = _missing_root_errors([entry for _, entry in entries])
    reports, seen = [], set()
    for loader, entry in entries:
        marker = (entry.ann_file, entry.img_dir, entry.classes)
        # Val and test often share one dataset; a missing root is reported.
        if marker in seen or (entry.data_root
                              and not osp.isdir(entry.data_root)):
            continue
        seen.add(marker)
        found, report = check_dataset(
            cfg, entry, train=loader == 'train_dataloader', warn=warn)
        errors += found
        if report is not None and not found:
            reports.append(report)
            _log_report(report, loader, log, warn)
    for loader in dataloaders:
        if loader in _EVALUATORS:
            errors += _check_evaluator_files(cfg, _EVALUATORS[loader])
    if errors:
        raise DataCheckError('\n'.join(f'- {e}' for e in errors))
    return reports
