# Co-Deformable-DETR R50 with the COCO 1x recipe (12 epochs, COCO image
# scales) on the synthetic shapes dataset. Only the data and num_classes
# differ from ../co_deformable_detr_r50_1x_coco.py.
#
# Data: python tools/generate_shapes_dataset.py --out data/shapes \
#           --num-train 2000 --num-val 200
# Train (8 GPUs): bash tools/dist_train.sh \
#           configs/shapes/co_deformable_detr_r50_1x_shapes.py 8
_base_ = '../co_deformable_detr_r50_1x_coco.py'

data_root = 'data/shapes/'
# Class names and colours of projects/codetr/datasets/synthetic_shapes.py
# (SHAPES_METAINFO); labels follow the category order of the annotation
# files, which is this order.
metainfo = dict(
    classes=('circle', 'square', 'triangle', 'star', 'cross', 'ring'),
    palette=[(220, 40, 40), (40, 170, 60), (40, 80, 230), (240, 200, 30),
             (190, 50, 200), (30, 200, 210)])

model = dict(num_classes=6)

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
