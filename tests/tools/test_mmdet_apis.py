"""The configs work with mmdet's own inference APIs (no import hacks)."""
import numpy as np
import pytest
import torch
from codetr_testing import load_config, tiny_model_cfg


@pytest.fixture
def tiny_cfg():
    """A fresh config per test: mmdet's inference_detector edits the test
    pipeline of the config it is given in place."""
    cfg = load_config()
    cfg.model = tiny_model_cfg(num_query=40)
    cfg.model.data_preprocessor = load_config().model.data_preprocessor
    return cfg


def _initialise(model):
    """Seeded ``init_weights``. mmdet's APIs build a model without a
    checkpoint as it comes out of its constructor: parameters that only
    ``init_weights`` fills, such as the transformer's ``level_embed``
    (``torch.empty``, as in mmdet's Deformable DETR), hold whatever memory
    they were given, non-finite values included, and the predictions are
    NaN when they do. A checkpoint overwrites them; these tests have
    none."""
    torch.manual_seed(0)
    model.init_weights()


def _image(seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)


def test_init_detector_and_inference_detector(tiny_cfg):
    from mmdet.apis import inference_detector, init_detector
    model = init_detector(tiny_cfg, checkpoint=None, device='cpu')
    assert type(model).__name__ == 'CoDETR'
    _initialise(model)
    result = inference_detector(model, _image())
    pred = result.pred_instances
    assert 0 < len(pred.bboxes) <= 100
    assert (pred.bboxes[:, 2] <= 128).all() and (pred.bboxes[:, 3] <= 96).all()


def test_det_inferencer(tiny_cfg, tmp_path):
    from mmdet.apis import DetInferencer
    inferencer = DetInferencer(model=tiny_cfg, weights=None, device='cpu',
                               show_progress=False)
    _initialise(inferencer.model)
    import cv2
    path = str(tmp_path / 'image.jpg')
    cv2.imwrite(path, _image(1))
    out = inferencer(path, out_dir=str(tmp_path / 'out'), no_save_pred=False)
    (pred, ) = out['predictions']
    assert len(pred['bboxes']) == len(pred['scores']) <= 100
    assert (tmp_path / 'out' / 'preds' / 'image.json').is_file()
    assert (tmp_path / 'out' / 'vis' / 'image.jpg').is_file()
