# Co-DINO 5-scale R50 with 9 encoder layers and LSJ, 12 epochs on COCO 2017
# (published: 52.6 box AP, Sense-X/Co-DETR README). Released config:
# co_dino/co_dino_5scale_9encoder_lsj_r50_1x_coco.py.
_base_ = './co_dino_5scale_r50_lsj_1x_coco.py'

model = dict(
    query_head=dict(
        transformer=dict(
            # Released: all 9 layers activation-checkpointed (memory only).
            encoder=dict(num_layers=9, num_cp=9))))
