# The synthetic shapes dataset (tools/generate_shapes_dataset.py) with the
# COCO recipe's augmentation and image scales (./coco_detection.py): only
# the paths and the classes differ. Models on it set `num_classes=6`.
#
# Data: python tools/generate_shapes_dataset.py --out data/shapes \
#           --num-train 2000 --num-val 200
_base_ = './coco_detection.py'

data_root = 'data/shapes/'
# Class names and colours of projects/codetr/datasets/synthetic_shapes.py
# (SHAPES_METAINFO); labels follow the category order of the annotation
# files, which is this order.
metainfo = dict(
    classes=('circle', 'square', 'triangle', 'star', 'cross', 'ring'),
    palette=[(220, 40, 40), (40, 170, 60), (40, 80, 230), (240, 200, 30),
             (190, 50, 200), (30, 200, 210)])

train_dataloader = dict(
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/')))
val_dataloader = dict(
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/')))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
