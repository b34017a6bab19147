"""Tests of the synthetic COCO shapes generator (small images, seconds)."""
import json
import os.path as osp
from dataclasses import replace

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from projects.codetr.datasets import (SHAPES_CLASSES, SHAPES_METAINFO,
                                      ShapesConfig, generate_shapes_dataset,
                                      render_image)
from projects.codetr.datasets.synthetic_shapes import empty_image_indices

CFG = ShapesConfig(seed=3, min_side=64, max_side=128, empty_fraction=0.2)
SPLITS = dict(train=12, val=6)


def _read(root: str, split: str) -> dict:
    with open(osp.join(root, 'annotations', f'instances_{split}.json')) as f:
        return json.load(f)


def _image_bytes(root: str, split: str) -> list:
    coco = _read(root, split)
    out = []
    for info in coco['images']:
        with open(osp.join(root, split, info['file_name']), 'rb') as f:
            out.append(f.read())
    return out


@pytest.fixture(scope='module')
def dataset(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp('shapes'))
    summary, generated = generate_shapes_dataset(root, SPLITS, CFG)
    assert generated
    assert summary['train']['images'] == SPLITS['train']
    return root


def test_pycocotools_loads_and_masks_match_boxes(dataset):
    for split, num in SPLITS.items():
        coco = COCO(
            osp.join(dataset, 'annotations', f'instances_{split}.json'))
        assert len(coco.getImgIds()) == num
        assert coco.getAnnIds(), 'every split should have objects'
        for ann in coco.loadAnns(coco.getAnnIds()):
            mask = coco.annToMask(ann)
            ys, xs = np.nonzero(mask)
            x, y, w, h = ann['bbox']
            # The outline polygon fills (almost) exactly the box.
            assert xs.min() >= np.floor(x) - 1 and xs.max() <= np.ceil(x + w)
            assert ys.min() >= np.floor(y) - 1 and ys.max() <= np.ceil(y + h)
            assert xs.max() - xs.min() + 1 >= w - 2
            assert ys.max() - ys.min() + 1 >= h - 2


def test_ground_truth_as_detections_scores_full_ap(dataset):
    coco = COCO(osp.join(dataset, 'annotations', 'instances_train.json'))
    dets = [
        dict(
            image_id=a['image_id'],
            category_id=a['category_id'],
            bbox=a['bbox'],
            score=1.0) for a in coco.loadAnns(coco.getAnnIds())
    ]
    evaluator = COCOeval(coco, coco.loadRes(dets), 'bbox')
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


def test_boxes_inside_images_and_fields_valid(dataset):
    for split in SPLITS:
        coco = _read(dataset, split)
        images = {im['id']: im for im in coco['images']}
        for info in images.values():
            img = cv2.imread(osp.join(dataset, split, info['file_name']))
            assert img.shape == (info['height'], info['width'], 3)
            assert CFG.min_side <= min(img.shape[:2])
            assert max(img.shape[:2]) <= CFG.max_side
        ann_ids = [a['id'] for a in coco['annotations']]
        assert len(set(ann_ids)) == len(ann_ids)
        for ann in coco['annotations']:
            info = images[ann['image_id']]
            x, y, w, h = ann['bbox']
            assert all(isinstance(v, float) for v in ann['bbox'])
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= info['width'] and y + h <= info['height']
            assert max(w, h) >= CFG.min_size - 0.01
            assert 0 < ann['area'] <= w * h + 2 * (w + h)
            assert ann['iscrowd'] == 0
            assert 1 <= ann['category_id'] <= len(SHAPES_CLASSES)
            assert len(ann['segmentation']) == 1
            assert len(ann['segmentation'][0]) >= 6


def test_empty_images_are_the_chosen_ones(dataset):
    for split, num in SPLITS.items():
        coco = _read(dataset, split)
        used = {a['image_id'] for a in coco['annotations']}
        empty = sorted(im['id'] - 1 for im in coco['images']
                       if im['id'] not in used)
        assert empty == empty_image_indices(CFG, split, num)
        assert len(empty) == round(CFG.empty_fraction * num)


def test_categories_match_exported_names(dataset):
    cats = _read(dataset, 'train')['categories']
    assert [c['id'] for c in cats] == list(range(1, len(SHAPES_CLASSES) + 1))
    assert tuple(c['name'] for c in cats) == SHAPES_CLASSES
    assert SHAPES_METAINFO['classes'] == SHAPES_CLASSES
    # mmdet reads a tuple palette as one colour for every class.
    assert isinstance(SHAPES_METAINFO['palette'], list)
    assert len(SHAPES_METAINFO['palette']) == len(SHAPES_CLASSES)


def test_same_seed_same_bytes_any_workers(dataset, tmp_path):
    _, generated = generate_shapes_dataset(
        str(tmp_path), SPLITS, CFG, workers=2)
    assert generated
    for split in SPLITS:
        assert _read(str(tmp_path), split) == _read(dataset, split)
        assert _image_bytes(str(tmp_path), split) == \
            _image_bytes(dataset, split)


def test_other_seed_and_other_split_differ(dataset):
    image, _ = render_image(CFG, 'train', 0, empty=False)
    other_seed, _ = render_image(replace(CFG, seed=4), 'train', 0, empty=False)
    other_split, _ = render_image(CFG, 'val', 0, empty=False)
    assert image.shape != other_seed.shape or \
        not np.array_equal(image, other_seed)
    assert image.shape != other_split.shape or \
        not np.array_equal(image, other_split)
    assert _image_bytes(dataset, 'train')[:SPLITS['val']] != \
        _image_bytes(dataset, 'val')


def test_occlusion_is_bounded():
    crowded = ShapesConfig(
        seed=0,
        min_side=96,
        max_side=96,
        mean_objects=12,
        max_objects=16,
        min_visible=0.4)
    visible = [
        o['visible'] for i in range(6)
        for o in render_image(crowded, 'train', i, empty=False)[1]
    ]
    assert min(visible) >= 0.4
    assert min(visible) < 0.9, 'test should produce occluded objects'


def test_existing_dataset_is_reused_unless_changed(dataset):
    summary, generated = generate_shapes_dataset(dataset, SPLITS, CFG)
    assert not generated
    assert summary['val']['images'] == SPLITS['val']
    _, generated = generate_shapes_dataset(dataset, SPLITS, CFG, force=True)
    assert generated


def test_invalid_sizes_are_explained():
    with pytest.raises(ValueError, match='min_size'):
        ShapesConfig(min_side=64, min_size=40)


def test_mmdet_coco_dataset_loads(dataset):
    from mmdet.datasets import CocoDataset
    from mmdet.utils import register_all_modules
    register_all_modules()
    ds = CocoDataset(
        data_root=dataset,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        metainfo=SHAPES_METAINFO,
        filter_cfg=dict(filter_empty_gt=False),
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', with_bbox=True),
            dict(type='PackDetInputs')
        ])
    assert ds.metainfo['classes'] == SHAPES_CLASSES
    assert len(ds) == SPLITS['train']
    coco = _read(dataset, 'train')
    n_instances = sum(
        len(ds.get_data_info(i)['instances']) for i in range(len(ds)))
    assert n_instances == len(coco['annotations'])
    sample = ds[0]
    labels = sample['data_samples'].gt_instances.labels
    assert ((labels >= 0) & (labels < len(SHAPES_CLASSES))).all()
    assert sample['inputs'].shape[1:] == (coco['images'][0]['height'],
                                          coco['images'][0]['width'])
