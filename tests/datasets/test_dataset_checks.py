"""Bad dataset input gives a clear error or is handled, and nothing the
annotation file does not intend reaches the loss."""
import json
import logging
import os
import os.path as osp

import cv2
import numpy as np
import pytest
from codetr_testing import REPO_ROOT
from mmengine.config import Config

from projects.codetr.datasets.annotation_report import inspect_coco_annotations
from projects.codetr.datasets.checks import (DataCheckError,
                                             check_config_datasets,
                                             find_num_classes)
from projects.codetr.datasets.robust_loading import (ImageLoadError,
                                                     RobustLoadImageFromFile,
                                                     use_robust_image_loading)

CLASSES = ('circle', 'square', 'triangle')
SHAPES = ('circle', 'square', 'triangle', 'star', 'cross', 'ring')


def write_coco(root, split='train', images=None, annotations=(),
               categories=None, write_images=True):
    """Write ``root/annotations/instances_<split>.json`` and its images.

    Args:
        images: ``(file_name, width, height)`` tuples; default two images.
        annotations: ``(image_index, category_id, [x, y, w, h], extra)``.
        categories: ``(id, name)`` pairs; default ids 1.. for CLASSES.
    """
    images = images or [('a.jpg', 64, 48), ('b.jpg', 64, 48)]
    categories = categories or list(enumerate(CLASSES, 1))
    img_dir = osp.join(root, split)
    ann_dir = osp.join(root, 'annotations')
    for d in (img_dir, ann_dir):
        os.makedirs(d, exist_ok=True)
    coco = dict(
        images=[dict(id=i + 1, file_name=n, width=w, height=h)
                for i, (n, w, h) in enumerate(images)],
        annotations=[],
        categories=[dict(id=i, name=n) for i, n in categories])
    for k, (img, cat, bbox, extra) in enumerate(annotations):
        ann = dict(id=k + 1, image_id=img + 1, category_id=cat, bbox=bbox,
                   area=max(bbox[2] * bbox[3], 0) if len(bbox) == 4 else 1,
                   iscrowd=0)
        ann.update(extra)
        coco['annotations'].append(ann)
    with open(osp.join(ann_dir, f'instances_{split}.json'), 'w') as f:
        json.dump(coco, f)
    if write_images:
        rng = np.random.default_rng(0)
        for name, w, h in images:
            cv2.imwrite(osp.join(img_dir, name),
                        rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    return coco


def make_cfg(root, classes=CLASSES, num_classes=None, val=False):
    """A config with a CocoDataset train (and val) loader and a model that
    has ``num_classes`` in two heads, one inside a list."""
    n = len(classes or CLASSES) if num_classes is None else num_classes

    def dataset(split):
        ds = dict(type='CocoDataset', data_root=str(root),
                  ann_file=f'annotations/instances_{split}.json',
                  data_prefix=dict(img=f'{split}/'),
                  filter_cfg=dict(filter_empty_gt=False), pipeline=[])
        if classes is not None:
            ds['metainfo'] = dict(classes=classes)
        return ds

    cfg = dict(
        model=dict(type='X', bbox_head=dict(num_classes=n),
                   roi_head=[dict(bbox_head=dict(num_classes=n))]),
        train_dataloader=dict(dataset=dataset('train')))
    if val:
        cfg['val_dataloader'] = dict(dataset=dataset('val'))
    return Config(cfg)


def test_missing_dataset_folder_names_path_and_fix(tmp_path):
    cfg = make_cfg(tmp_path / 'nowhere', val=True)
    with pytest.raises(DataCheckError) as err:
        check_config_datasets(cfg, log=lambda s: None)
    msg = str(err.value)
    assert msg.count('Dataset folder not found') == 1  # one per folder
    assert (f'{tmp_path}/nowhere (data_root of train_dataloader.dataset, '
            'val_dataloader.dataset;') in msg
    assert f'generate_shapes_dataset.py --out {tmp_path}/nowhere' in msg
    assert ('--cfg-options train_dataloader.dataset.data_root=/path/to/data/'
            ' val_dataloader.dataset.data_root=/path/to/data/') in msg


def test_missing_annotation_file_names_path(tmp_path):
    write_coco(tmp_path)
    cfg = make_cfg(tmp_path, val=True)  # no val annotation written
    with pytest.raises(DataCheckError) as err:
        check_config_datasets(cfg, ['train_dataloader', 'val_dataloader'],
                              log=lambda s: None)
    msg = str(err.value)
    assert osp.join(str(tmp_path), 'annotations/instances_val.json') in msg
    assert 'val_dataloader.dataset.ann_file' in msg
    assert 'train_dataloader' not in msg  # the train split is fine


def test_missing_metric_annotation_file(tmp_path):
    write_coco(tmp_path, 'val')
    cfg = make_cfg(tmp_path, val=True)
    cfg.val_evaluator = dict(type='CocoMetric',
                             ann_file=str(tmp_path / 'missing.json'))
    with pytest.raises(DataCheckError, match='val_evaluator.ann_file'):
        check_config_datasets(cfg, ['val_dataloader'], log=lambda s: None)


def test_class_names_not_in_file_name_both_lists(tmp_path):
    write_coco(tmp_path, categories=[(1, 'cat'), (2, 'dog')])
    with pytest.raises(DataCheckError) as err:
        check_config_datasets(make_cfg(tmp_path), log=lambda s: None)
    msg = str(err.value)
    assert "['circle', 'square', 'triangle'] are not in the file" in msg
    assert "categories in the file: ['cat', 'dog']" in msg
    assert 'train_dataloader.dataset.metainfo' in msg


def test_default_coco_classes_are_named_as_the_cause(tmp_path):
    write_coco(tmp_path)
    with pytest.raises(DataCheckError) as err:
        check_config_datasets(make_cfg(tmp_path, classes=None),
                              log=lambda s: None)
    assert 'the default classes of CocoDataset' in str(err.value)
    assert 'sets no train_dataloader.dataset.metainfo' in str(err.value)


def test_class_order_differing_from_file_is_an_error(tmp_path):
    write_coco(tmp_path)
    cfg = make_cfg(tmp_path, classes=('square', 'circle', 'triangle'))
    with pytest.raises(DataCheckError, match='different order'):
        check_config_datasets(cfg, log=lambda s: None)


def test_num_classes_mismatch_lists_every_setting(tmp_path):
    write_coco(tmp_path)
    cfg = make_cfg(tmp_path, num_classes=80)
    with pytest.raises(DataCheckError) as err:
        check_config_datasets(cfg, log=lambda s: None)
    msg = str(err.value)
    assert 'model.bbox_head.num_classes=80' in msg
    assert 'model.roi_head.0.bbox_head.num_classes=80' in msg
    assert 'the dataset has 3 classes' in msg
    cfg.num_classes = 80  # one top-level setting feeding all heads
    with pytest.raises(DataCheckError, match='set `num_classes = 3` at the'):
        check_config_datasets(cfg, log=lambda s: None)


def test_find_num_classes_recurses_into_lists():
    model = dict(a=dict(num_classes=2), b=[dict(c=dict(num_classes=5))],
                 num_classes=2)
    assert sorted(find_num_classes(model)) == [
        ('model.a.num_classes', 2), ('model.b.0.c.num_classes', 5),
        ('model.num_classes', 2)]


def test_bad_boxes_are_counted_with_reasons(tmp_path):
    anns = [
        (0, 1, [10, 10, 20, 20], {}),  # kept
        (0, 1, [10, 10, 0, 20], {}),  # zero width
        (0, 2, [10, 10, 5, -3], {}),  # negative height
        (0, 2, [10, 10, 0.5, 8], {}),  # below one pixel
        (1, 3, [70, 10, 5, 5], {}),  # right of the 64 px wide image
        (1, 3, [5, 5, 10, 10], dict(area=0)),  # area 0
        (1, 3, [5, 5, 10, 10], dict(iscrowd=1)),  # kept, ignored
        (1, 9, [5, 5, 10, 10], {}),  # unknown category id
    ]
    coco = write_coco(tmp_path, annotations=anns)
    report = inspect_coco_annotations(coco, 'x.json', CLASSES)
    assert report.num_boxes == 2 and report.num_crowd == 1
    assert report.dropped == {
        'boxes of zero or negative width/height': 2,
        'boxes narrower or lower than 1 pixel': 1,
        'boxes outside their image': 1,
        "boxes with 'area' <= 0": 1,
        'boxes whose category_id is not in the categories list': 1}
    warnings = []
    check_config_datasets(make_cfg(tmp_path), log=lambda s: None,
                          warn=warnings.append)
    assert any('drops 2 boxes of zero or negative width/height (e.g. id 2'
               in w for w in warnings)


def test_malformed_box_is_an_error_naming_the_annotation(tmp_path):
    write_coco(tmp_path, annotations=[(0, 1, [1, 2, 3], {})])
    with pytest.raises(DataCheckError, match=r'annotation id 1 .*a\.jpg'):
        check_config_datasets(make_cfg(tmp_path), log=lambda s: None)


def test_missing_images_warn_for_training_error_for_evaluation(tmp_path):
    write_coco(tmp_path)
    write_coco(tmp_path, 'val')
    (tmp_path / 'train' / 'b.jpg').unlink()
    (tmp_path / 'val' / 'b.jpg').unlink()
    warnings = []
    check_config_datasets(make_cfg(tmp_path), ['train_dataloader'],
                          log=lambda s: None, warn=warnings.append)
    assert any('1 of 2 images' in w and 'b.jpg' in w for w in warnings)
    with pytest.raises(DataCheckError, match='Evaluation needs every image'):
        check_config_datasets(make_cfg(tmp_path, val=True),
                              ['val_dataloader'], log=lambda s: None)
    (tmp_path / 'train' / 'a.jpg').unlink()
    with pytest.raises(DataCheckError, match='2 of 2 images .* missing'):
        check_config_datasets(make_cfg(tmp_path), ['train_dataloader'],
                              log=lambda s: None)


def build_dataset(root, pipeline, test_mode=False, split='train'):
    from mmdet.datasets import CocoDataset
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    return CocoDataset(
        data_root=str(root), ann_file=f'annotations/instances_{split}.json',
        data_prefix=dict(img=f'{split}/'), metainfo=dict(classes=CLASSES),
        filter_cfg=dict(filter_empty_gt=False), pipeline=pipeline,
        test_mode=test_mode)


LOAD = [dict(type='RobustLoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(type='PackDetInputs')]


def test_noncontiguous_ids_crowd_and_empty_images_in_the_dataset(tmp_path):
    # Category ids 3, 7, 42 in file order -> labels 0, 1, 2.
    cats = [(3, 'circle'), (7, 'square'), (42, 'triangle')]
    anns = [(0, 42, [1, 1, 10, 10], {}), (0, 7, [20, 5, 10, 10], {}),
            (0, 3, [30, 20, 8, 8], dict(iscrowd=1)),
            (0, 3, [5, 5, 0, 9], {})]  # degenerate, dropped
    coco = write_coco(tmp_path, annotations=anns, categories=cats)
    report = inspect_coco_annotations(coco, 'x', CLASSES)
    assert report.cat2label == {3: 0, 7: 1, 42: 2}
    assert 'category ids are mapped' in report.label_map_note()
    assert report.num_empty_images == 1

    ds = build_dataset(tmp_path, LOAD)
    assert len(ds) == 2  # the image without boxes stays
    sample = ds[0]['data_samples']
    assert sample.gt_instances.labels.tolist() == [2, 1]
    # The crowd box is not a target: PackDetInputs moved it aside.
    ignored = sample.ignored_instances.bboxes.tensor.tolist()
    assert ignored == [[30, 20, 38, 28]]
    assert len(ds[1]['data_samples'].gt_instances) == 0


class Records(logging.Handler):
    """Collects the messages of a logger."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_corrupt_image_is_skipped_with_a_warning_in_training(tmp_path):
    write_coco(tmp_path, annotations=[(0, 1, [1, 1, 10, 10], {}),
                                      (1, 2, [2, 2, 10, 10], {})])
    bad = tmp_path / 'train' / 'a.jpg'
    bad.write_bytes(b'not a jpeg')
    ds = build_dataset(tmp_path, LOAD)
    from mmengine.logging import MMLogger
    logger, records = MMLogger.get_current_instance(), Records()
    logger.addHandler(records)
    try:
        out = ds[0]  # refetches another index instead of crashing
    finally:
        logger.removeHandler(records)
    assert out['data_samples'].img_path.endswith('b.jpg')
    assert any(m.startswith(f'Skipping unreadable image {bad}')
               for m in records.messages)


def test_corrupt_image_is_a_clear_error_in_evaluation(tmp_path):
    write_coco(tmp_path, 'val')
    bad = tmp_path / 'val' / 'a.jpg'
    bad.write_bytes(b'')
    ds = build_dataset(tmp_path, [dict(type='RobustLoadImageFromFile',
                                       on_error='raise')] + LOAD[1:],
                       test_mode=True, split='val')
    with pytest.raises(ImageLoadError, match=f'Cannot read image {bad}'):
        ds[0]


def test_robust_loader_rejects_ignore_empty():
    with pytest.raises(ValueError, match='on_error'):
        RobustLoadImageFromFile(ignore_empty=True)


def test_use_robust_image_loading_per_split():
    load = dict(type='LoadImageFromFile', backend_args=None)
    cfg = Config(dict(
        train_dataloader=dict(dataset=dict(
            type='RepeatDataset', times=2,
            dataset=dict(type='CocoDataset', pipeline=[dict(load)]))),
        val_dataloader=dict(dataset=dict(type='CocoDataset', pipeline=[
            dict(load), dict(type='TestTimeAug', transforms=[[dict(load)]])
        ]))))
    assert use_robust_image_loading(cfg) == 3
    train_step = cfg.train_dataloader.dataset.dataset.pipeline[0]
    assert train_step == dict(type='RobustLoadImageFromFile',
                              backend_args=None, on_error='skip')
    val = cfg.val_dataloader.dataset.pipeline
    assert val[0].on_error == 'raise'
    assert val[1].transforms[0][0].on_error == 'raise'


@pytest.mark.parametrize('config', [
    'configs/shapes/co_deformable_detr_r50_shapes_small.py',
    'configs/co_deformable_detr_r50_1x_coco.py'
])
def test_co_detr_train_pipeline_keeps_boxes_valid_and_crowd_ignored(
        config, tmp_path):
    """Through flips, multi-scale resizes and random crops, every target box
    keeps a positive size and crowd boxes stay out of the targets."""
    anns = [(0, 1, [0, 0, 30, 20], {}), (0, 2, [150, 100, 49.5, 59.5], {}),
            (0, 3, [60, 40, 1, 1], {}),  # smallest box mmdet keeps
            (0, 1, [90, 70, 40, 40], dict(iscrowd=1)),
            (0, 2, [10, 10, 0, 5], {})]  # degenerate: dropped on parsing
    write_coco(tmp_path, images=[('a.jpg', 200, 160)], annotations=anns)
    pipeline = Config.fromfile(
        osp.join(REPO_ROOT,
                 config)).train_dataloader.dataset.pipeline
    ds = build_dataset(tmp_path, pipeline)
    np.random.seed(0)
    crowd_seen = 0
    for _ in range(40):
        sample = ds[0]['data_samples']
        boxes = sample.gt_instances.bboxes.tensor
        assert len(boxes) <= 3
        assert ((boxes[:, 2:] - boxes[:, :2]) > 0).all()
        crowd_seen += len(sample.ignored_instances)
    assert crowd_seen > 0  # the crowd box survives, as an ignored region


@pytest.mark.parametrize('name', ['co_deformable_detr_r50_shapes_small.py',
                                  'co_deformable_detr_r50_1x_shapes.py'])
def test_shapes_configs_fit_the_generated_data(name, tmp_path):
    from projects.codetr.datasets import (SHAPES_CLASSES, SHAPES_PALETTE,
                                          ShapesConfig,
                                          generate_shapes_dataset)
    generate_shapes_dataset(
        str(tmp_path), dict(train=2, val=2),
        ShapesConfig(seed=0, min_side=64, max_side=96, min_size=16),
        workers=1)
    cfg = Config.fromfile(osp.join(REPO_ROOT,
                                   'configs', 'shapes', name))
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        meta = cfg[loader].dataset.metainfo
        assert tuple(meta.classes) == SHAPES_CLASSES
        assert [tuple(c) for c in meta.palette] == list(SHAPES_PALETTE)
        cfg[loader].dataset.data_root = f'{tmp_path}/'
    for key in ('val_evaluator', 'test_evaluator'):
        cfg[key].ann_file = f'{tmp_path}/annotations/instances_val.json'
    reports = check_config_datasets(cfg, log=lambda s: None)
    assert len(reports) == 2 and cfg.model.num_classes == len(SHAPES_CLASSES)


def test_crowd_box_changes_no_co_detr_loss(tmp_path):
    """A crowd box reaches the model as an ignored instance and is never a
    target: every loss equals that of the image without it."""
    import torch
    from codetr_testing import build_model
    from mmdet.registry import DATASETS
    from mmengine.registry import init_default_scope

    init_default_scope('mmdet')
    cfg = Config.fromfile(
        osp.join(REPO_ROOT, 'tests', 'configs', 'tiny_co_detr_shapes.py'))
    cfg.train_dataloader.dataset.data_root = f'{tmp_path}/'
    model = build_model(cfg.model).train()
    crowd = (0, 2, [50, 20, 40, 40], dict(iscrowd=1))
    losses, ignored = [], []
    for anns in ([(0, 1, [10, 10, 30, 30], {}), crowd],
                 [(0, 1, [10, 10, 30, 30], {})]):
        write_coco(tmp_path, images=[('a.jpg', 120, 90)], annotations=anns,
                   categories=list(enumerate(SHAPES, 1)))
        np.random.seed(0)  # the same flip / resize / crop draws
        sample = DATASETS.build(cfg.train_dataloader.dataset)[0]
        torch.manual_seed(0)  # the same RPN / RoI sampling
        batch = model.data_preprocessor(
            dict(inputs=[sample['inputs']],
                 data_samples=[sample['data_samples']]), True)
        losses.append(model.loss(batch['inputs'], batch['data_samples']))
        ignored.append(len(batch['data_samples'][0].ignored_instances))
    assert ignored == [1, 0]
    with_crowd, without = losses
    assert with_crowd.keys() == without.keys()
    for key, value in with_crowd.items():
        value = torch.stack(value) if isinstance(value, list) else value
        other = without[key]
        other = torch.stack(other) if isinstance(other, list) else other
        assert torch.allclose(value, other), key
