"""What mmdet's ``CocoDataset`` will make of a COCO annotation file.

:func:`inspect_coco_annotations` walks the raw JSON once and applies the same
rules as ``mmdet.datasets.CocoDataset.parse_data_info`` (mmdet 3.3), so that
the numbers it reports are the boxes that reach training:

* a box is dropped when it does not overlap the image, when its ``area`` is
  not positive, or when its width or height is below 1 pixel (this covers
  zero and negative sizes);
* a box whose ``category_id`` is not one of the selected classes is dropped;
* ``iscrowd=1`` boxes are kept with ``ignore_flag=1``: ``PackDetInputs``
  moves them to ``ignored_instances``, so they are never matched as targets;
* labels are ``0..C-1`` in the order of the file's ``categories`` list
  (``COCO.get_cat_ids`` keeps the file order), whatever the category ids.

Structural faults that would crash deep inside a dataloader worker (a box
that is not four finite numbers, a missing ``area``, duplicate ids) are
collected as errors instead.
"""
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

# At most this many example ids/paths are quoted per kind of problem.
_MAX_EXAMPLES = 3


@dataclass
class AnnotationReport:
    """Counts for one annotation file, as seen by ``CocoDataset``.

    Attributes:
        ann_file: Path of the annotation file.
        num_images: Images listed in the file.
        num_boxes: Boxes that become training targets or ignored regions.
        num_crowd: Kept boxes with ``iscrowd=1`` (become ``ignore_flag=1``).
        num_empty_images: Images without any kept box.
        dropped: Number of dropped boxes per reason.
        examples: A few annotation ids / file names per reason or problem.
        cat2label: ``category_id -> label`` for the selected classes.
        errors: Problems that make the file unusable.
    """
    ann_file: str
    num_images: int = 0
    num_boxes: int = 0
    num_crowd: int = 0
    num_empty_images: int = 0
    dropped: Dict[str, int] = field(default_factory=dict)
    examples: Dict[str, List[str]] = field(default_factory=dict)
    cat2label: Dict[int, int] = field(default_factory=dict)
    errors: List[str] = field(default_factory=list)

    def note(self, reason: str, example: str, count: bool = True) -> None:
        """Count one case of ``reason`` and keep ``example`` if few so far."""
        if count:
            self.dropped[reason] = self.dropped.get(reason, 0) + 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < _MAX_EXAMPLES:
            examples.append(example)

    def describe(self, reason: str) -> str:
        """``'<n> <reason> (e.g. a, b, c)'`` for a counted reason."""
        examples = ', '.join(self.examples.get(reason, []))
        return f'{self.dropped[reason]} {reason} (e.g. {examples})'

    def summary(self) -> str:
        """One line with the counts that matter for training."""
        text = (f'{self.ann_file}: {self.num_images} images, '
                f'{self.num_boxes} boxes ({self.num_crowd} crowd, kept as '
                f'ignored), {self.num_empty_images} images without boxes, '
                f'{sum(self.dropped.values())} boxes dropped')
        return text

    def label_map_note(self) -> Optional[str]:
        """Says how category ids map to labels when they are not 0..C-1."""
        ids = list(self.cat2label)
        # 0..C-1 and COCO's usual 1..C need no explanation.
        if not ids or ids == list(range(ids[0], ids[0] + len(ids))) \
                and ids[0] in (0, 1):
            return None
        pairs = ', '.join(f'{i}->{label}'
                          for i, label in list(self.cat2label.items())[:10])
        more = ', ...' if len(ids) > 10 else ''
        return (f'{self.ann_file}: category ids are mapped to labels in '
                f'file order: {pairs}{more}')


def _valid_box(bbox) -> bool:
    """Whether ``bbox`` is a list of four finite numbers."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return False
    try:
        return all(math.isfinite(float(v)) for v in bbox)
    except (TypeError, ValueError):
        return False


def _duplicates(values: Sequence) -> List:
    return [v for v, n in Counter(values).items() if n > 1]


def _box_drop_reason(bbox: Sequence[float], area, width: float,
                     height: float) -> Optional[str]:
    """The rule of ``CocoDataset.parse_data_info`` that drops a box, if any.

    Args:
        bbox: ``[x, y, w, h]`` in pixels (COCO format).
        area: The annotation's ``area``.
        width: Image width in pixels.
        height: Image height in pixels.
    """
    x1, y1, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        return 'boxes of zero or negative width/height'
    inter_w = max(0., min(x1 + w, width) - max(x1, 0.))
    inter_h = max(0., min(y1 + h, height) - max(y1, 0.))
    if inter_w * inter_h == 0:
        return 'boxes outside their image'
    if w < 1 or h < 1:
        return 'boxes narrower or lower than 1 pixel'
    if area <= 0:
        return "boxes with 'area' <= 0"
    return None


def _check_images(coco: dict, report: AnnotationReport) -> Dict[int, dict]:
    """Index the images by id, recording structural errors."""
    images = coco.get('images')
    if not isinstance(images, list):
        report.errors.append("it has no 'images' list")
        return {}
    by_id = {}
    for img in images:
        missing = [k for k in ('id', 'file_name', 'width', 'height')
                   if k not in img]
        if missing:
            report.errors.append(f'image entry {img} lacks {missing}')
            return {}
        by_id[img['id']] = img
    dup = _duplicates([img['id'] for img in images])
    if dup:
        report.errors.append(f'image ids are not unique (e.g. {dup[:3]})')
    report.num_images = len(images)
    return by_id


def inspect_coco_annotations(coco: dict, ann_file: str,
                             classes: Sequence[str]) -> AnnotationReport:
    """Apply ``CocoDataset``'s parsing rules to a loaded COCO JSON.

    Args:
        coco: The loaded annotation file (``images``, ``annotations``,
            ``categories``).
        ann_file: Its path, quoted in messages.
        classes: The class names the dataset selects (its metainfo).

    Returns:
        AnnotationReport: Counts, label map and errors. Category-name
        mismatches are not judged here (see ``checks.check_categories``);
        boxes of categories outside ``classes`` are counted as dropped.
    """
    report = AnnotationReport(ann_file=ann_file)
    images = _check_images(coco, report)
    categories = coco.get('categories') or []
    wanted = set(classes)
    report.cat2label = {}
    for cat in categories:
        if cat.get('name') in wanted:
            report.cat2label[cat['id']] = len(report.cat2label)
    known_ids = {cat.get('id') for cat in categories}
    annotations = coco.get('annotations', [])
    if not isinstance(annotations, list):
        report.errors.append("its 'annotations' entry is not a list")
        return report
    dup = _duplicates([ann.get('id') for ann in annotations])
    if dup:
        report.errors.append(
            f'annotation ids are not unique (e.g. {dup[:3]}); mmdet '
            'requires unique ids')

    boxes_per_image: Counter = Counter()
    for ann in annotations:
        ann_id = ann.get('id')
        img = images.get(ann.get('image_id'))
        if img is None:
            report.note('annotations of unknown images', f'id {ann_id}')
            continue
        if ann.get('ignore', False):
            report.note("annotations with 'ignore' set", f'id {ann_id}')
            continue
        bbox = ann.get('bbox')
        if not _valid_box(bbox):
            report.errors.append(
                f'annotation id {ann_id} (image {img["file_name"]!r}) has '
                f'bbox {bbox!r}; COCO boxes are [x, y, w, h], four numbers')
            continue
        if 'area' not in ann:
            report.errors.append(
                f"annotation id {ann_id} has no 'area'; mmdet needs it "
                "(the box's w*h will do)")
            continue
        reason = _box_drop_reason(bbox, ann['area'], img['width'],
                                  img['height'])
        if reason is None and ann.get('category_id') not in known_ids:
            reason = 'boxes whose category_id is not in the categories list'
        if reason is None and ann['category_id'] not in report.cat2label:
            reason = 'boxes of categories outside the selected classes'
        if reason is not None:
            report.note(reason, f'id {ann_id} bbox {list(bbox)}')
            continue
        boxes_per_image[img['id']] += 1
        report.num_boxes += 1
        report.num_crowd += bool(ann.get('iscrowd', False))
    report.num_empty_images = sum(1 for img_id in images
                                  if boxes_per_image[img_id] == 0)
    return report
