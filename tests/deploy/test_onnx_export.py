"""ONNX export of Co-Deformable-DETR and DAB-Deformable-DETR
(tools/deploy/export_onnx.py).

A shrunk model of each is exported once with ``--dynamic`` by the tool,
run as a user would (subprocess), at batch 2 and 96x128; ONNX Runtime must
then give ``CoDETR.predict(rescale=False)``'s detections on image sizes and
a padded batch the export never saw. The tool's errors are checked on
Co-Deformable-DETR. CPU only.
"""
import importlib.util
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch

onnx = pytest.importorskip('onnx')
ort = pytest.importorskip('onnxruntime')

from codetr_testing import build_model, make_batch, tiny_model_cfg  # noqa

pytestmark = pytest.mark.slow  # exports and runs ONNX graphs

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(REPO, 'tools', 'deploy', 'export_onnx.py')
MAX_PER_IMG = 100


def load_tool():
    spec = importlib.util.spec_from_file_location('export_onnx_tool', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def export(tmp, config_name):
    """(model, config path, checkpoint path, onnx path) of the shrunk
    ``configs/<config_name>`` exported by the tool."""
    from mmengine.config import Config
    model_cfg = tiny_model_cfg(  # 50 x 3 classes >= top-100
        osp.join(REPO, 'configs', config_name), num_query=50)
    model = build_model(model_cfg)
    config = str(tmp / 'tiny.py')
    Config(dict(model=model_cfg,
                custom_imports=dict(imports=['projects.codetr']))).dump(config)
    checkpoint = str(tmp / 'tiny.pth')
    torch.save({'state_dict': model.state_dict()}, checkpoint)
    out = str(tmp / 'tiny.onnx')
    proc = subprocess.run(
        [sys.executable, TOOL, config, checkpoint, out, '--dynamic',
         '--shape', '96', '128', '--batch', '2'],
        capture_output=True, text=True, cwd=str(tmp), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'onnx.checker passed' in proc.stdout
    return model, config, checkpoint, out


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """Co-Deformable-DETR (K=2, the auxiliary heads not exported)."""
    return export(tmp_path_factory.mktemp('onnx'),
                  'co_deformable_detr_r50_1x_coco.py')


@pytest.fixture(scope='module')
def exported_dab(tmp_path_factory):
    """DAB-Deformable-DETR (learnt anchor queries, no query selection)."""
    return export(tmp_path_factory.mktemp('onnx_dab'),
                  'dab_deformable_detr_r50_50e_coco.py')


FAMILIES = ['exported', 'exported_dab']


@pytest.mark.parametrize('family', FAMILIES)
def test_graph_is_valid_dynamic_and_has_no_custom_op(family, request):
    path = request.getfixturevalue(family)[3]
    graph = onnx.load(path)
    onnx.checker.check_model(graph)
    domains = {n.domain for n in graph.graph.node}
    assert domains == {''}, domains  # no mmcv:: / com.microsoft ops
    ops = {n.op_type for n in graph.graph.node}
    assert 'GridSample' in ops and 'TopK' in ops
    assert not ops & {'MMCVMultiScaleDeformableAttention', 'NonMaxSuppression'}
    dims = {i.name: [d.dim_param or d.dim_value
                     for d in i.type.tensor_type.shape.dim]
            for i in graph.graph.input}
    assert dims == {'inputs': ['batch', 3, 'height', 'width'],
                    'img_sizes': ['batch', 2]}
    out_dims = [d.dim_param or d.dim_value
                for d in graph.graph.output[0].type.tensor_type.shape.dim]
    assert out_dims[0] == 'batch' and out_dims[2] == 4


@pytest.mark.parametrize('image_sizes', [
    ((64, 160), ),  # a level of height 1 (stride 64)
    ((120, 100), ),
    ((112, 144), (72, 90)),  # padded batch, sizes differ
])
@pytest.mark.parametrize('family', FAMILIES)
def test_onnxruntime_matches_pytorch(family, image_sizes, request):
    model, _, _, onnx_path = request.getfixturevalue(family)
    session = ort.InferenceSession(onnx_path,
                                   providers=['CPUExecutionProvider'])
    inputs, samples = make_batch(model, image_sizes, training=False, seed=5)
    sizes = np.array([s.img_shape for s in samples], dtype=np.int64)
    with torch.no_grad():
        results = model.predict(inputs, samples, rescale=False)
    boxes, scores, labels = session.run(None, {
        'inputs': inputs.numpy(),
        'img_sizes': sizes
    })
    assert boxes.shape == (len(image_sizes), MAX_PER_IMG, 4)
    assert labels.dtype == np.int64
    for i, result in enumerate(results):
        pred = result.pred_instances
        assert len(pred.scores) == MAX_PER_IMG
        np.testing.assert_allclose(scores[i], pred.scores.numpy(), atol=1e-4,
                                   rtol=0)
        np.testing.assert_allclose(boxes[i], pred.bboxes.numpy(), atol=1e-2,
                                   rtol=0)
        np.testing.assert_array_equal(labels[i], pred.labels.numpy())
        h, w = image_sizes[i]
        # clamped to the valid size, not the padded batch size
        assert boxes[i][:, 0::2].max() <= w and boxes[i][:, 1::2].max() <= h
        assert boxes[i].min() >= 0


def run_tool(args, capsys):
    code = load_tool().main(args)
    return code, capsys.readouterr().err


def test_error_old_opset(exported, capsys):
    _, config, checkpoint, _ = exported
    code, err = run_tool([config, checkpoint, 'x.onnx', '--opset', '15'],
                         capsys)
    assert code == 1
    assert 'opset 15 is too old' in err and 'GridSample' in err


def test_error_eval_module(exported, capsys, tmp_path):
    _, config, checkpoint, _ = exported
    code, err = run_tool([
        config, checkpoint,
        str(tmp_path / 'x.onnx'), '--cfg-options',
        'model.eval_module=one-stage'
    ], capsys)
    assert code == 1
    assert "only eval_module='detr'" in err and "'one-stage'" in err
    assert not (tmp_path / 'x.onnx').exists()


def test_error_mismatched_checkpoint(exported, capsys, tmp_path):
    model, config, _, _ = exported
    state = dict(model.state_dict())
    state.pop('query_head.query_embedding.weight')
    state['query_head.extra.weight'] = torch.zeros(1)
    bad = str(tmp_path / 'bad.pth')
    torch.save({'state_dict': state}, bad)
    code, err = run_tool([config, bad, str(tmp_path / 'x.onnx')], capsys)
    assert code == 1
    assert 'does not match' in err
    assert 'query_head.query_embedding.weight' in err  # missing
    assert 'query_head.extra.weight' in err  # unexpected
    assert not (tmp_path / 'x.onnx').exists()


def test_infer_onnx_writes_what_mmdet_inference_gives(exported, tmp_path):
    """tools/deploy/infer_onnx.py on an image file: the json it writes holds
    mmdet's ``inference_detector`` detections (same test pipeline, boxes in
    original-image pixels) and the drawn image exists."""
    import json

    import mmcv
    from codetr_testing import load_config
    from mmdet.apis import inference_detector
    model, _, _, onnx_path = exported
    cfg = load_config()  # the R50 config's test pipeline and dataset
    cfg.model = tiny_model_cfg(num_query=50)
    cfg.test_dataloader.dataset.metainfo = dict(classes=('a', 'b', 'c'))
    resize = [t for t in cfg.test_dataloader.dataset.pipeline
              if t['type'] == 'Resize'][0]
    resize['scale'] = (160, 128)  # keep the CPU test small
    config = str(tmp_path / 'with_pipeline.py')
    cfg.dump(config)
    image = str(tmp_path / 'shapes.jpg')
    rng = np.random.default_rng(0)
    mmcv.imwrite(rng.integers(0, 256, (150, 220, 3), dtype=np.uint8), image)
    tool = osp.join(REPO, 'tools', 'deploy', 'infer_onnx.py')
    out = tmp_path / 'out'
    proc = subprocess.run(
        [sys.executable, tool, onnx_path, config, image, '--out-dir',
         str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / 'vis' / 'shapes.jpg').is_file()
    with open(out / 'preds' / 'shapes.json') as f:
        preds = json.load(f)

    model.cfg = cfg
    expected = inference_detector(model, image).pred_instances
    assert len(preds['scores']) == len(expected.scores) == MAX_PER_IMG
    assert preds['labels'] == expected.labels.tolist()
    np.testing.assert_allclose(preds['scores'], expected.scores.numpy(),
                               rtol=0, atol=1e-4)
    np.testing.assert_allclose(preds['bboxes'], expected.bboxes.numpy(),
                               rtol=0, atol=1e-2)
