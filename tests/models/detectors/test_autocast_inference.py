"""Inference under autocast post-processes in float32.

The query head's last-layer logits and boxes leave the network in float32
whatever the autocast dtype: Co-DINO's soft-NMS runs mmcv's CPU kernel,
which reads float32 only (``RuntimeError: expected scalar type Float but
found Half`` under fp16 autocast on a GPU, ``... BFloat16`` here), and
boxes in half precision would lose up to half a pixel at 1000 px. The CPU
runs bfloat16 autocast; tests/gpu runs fp16 on a GPU.
"""
import pytest
import torch
from codetr_testing import REPO_ROOT, build_model, load_config, make_batch
from zoo_testing import shrink_model_cfg

CONFIGS = {
    'co_dino': f'{REPO_ROOT}/configs/co_dino_5scale_r50_1x_coco.py',
    'co_deformable_detr': f'{REPO_ROOT}/configs/'
    'co_deformable_detr_r50_1x_coco.py',
}


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_bfloat16_autocast_inference_gives_float32_detections(name):
    # 40 queries x 3 classes >= the 100 detections kept per image
    model = build_model(
        shrink_model_cfg(load_config(CONFIGS[name]).model, num_query=40))
    inputs, samples = make_batch(model, training=False)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        logits, boxes = model.detr_predictions(inputs, samples)
        results = model.predict(inputs, samples)
    assert logits.dtype == boxes.dtype == torch.float32
    for result in results:
        pred = result.pred_instances
        assert len(pred.bboxes) > 0
        assert pred.bboxes.dtype == pred.scores.dtype == torch.float32
