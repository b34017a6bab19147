"""Inference from CUDA graphs (``CoDETR(cuda_graphs=N)``) gives the eager
detections on inputs the capture did not see; on the CPU, in training mode,
with gradients enabled or beyond ``N`` signatures the eager path runs."""
import pytest
import torch
from codetr_testing import build_model, make_batch, tiny_model_cfg

from projects.codetr.models.detectors.cuda_graphs import CudaGraphCache

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason='needs CUDA')


def cfg(cuda_graphs: int = 0):
    # 40 queries x 3 classes >= the 100 detections kept per image
    return dict(tiny_model_cfg(num_query=40), cuda_graphs=cuda_graphs)


def detections(model, inputs, samples):
    with torch.no_grad():
        results = model.predict(inputs, samples)
    return [(r.pred_instances.bboxes, r.pred_instances.scores,
             r.pred_instances.labels) for r in results]


def test_max_graphs_and_warmup_must_be_positive():
    with pytest.raises(ValueError, match='max_graphs'):
        CudaGraphCache(0)
    with pytest.raises(ValueError, match='warmup'):
        CudaGraphCache(1, warmup=0)  # the capture needs a warm-up run


def test_cpu_inputs_run_eagerly():
    model = build_model(cfg())
    graphed = build_model(cfg(2))
    inputs, samples = make_batch(model, training=False)
    for ours, eager in zip(
            detections(graphed, inputs, samples),
            detections(model, inputs, samples)):
        for a, b in zip(ours, eager):
            assert torch.equal(a, b)
    assert len(graphed.cuda_graphs) == 0  # nothing captured on the CPU


@pytest.mark.gpu
@needs_cuda
def test_replayed_detections_match_eager_ones():
    model = build_model(cfg(2)).cuda()
    eager = build_model(cfg()).cuda()
    padded, unpadded = ((96, 128), (128, 112)), ((96, 128), (96, 128))
    batches = [
        make_batch(model, training=False, seed=s, image_sizes=sizes)
        for s, sizes in [(0, padded), (1, padded), (2, unpadded),
                         (3, ((64, 64), (64, 96)))]
    ]
    for inputs, samples in batches:
        inputs = inputs.cuda()
        for _ in range(2):  # capture (first batch), then replays
            ours = detections(model, inputs, samples)
        for mine, ref in zip(ours, detections(eager, inputs, samples)):
            torch.testing.assert_close(mine[0], ref[0], rtol=1e-4, atol=1e-3)
            torch.testing.assert_close(mine[1], ref[1], rtol=1e-4, atol=1e-5)
            assert torch.equal(mine[2], ref[2])
    # batches 0 and 1 share a signature; batch 3 is beyond max_graphs=2
    assert len(model.cuda_graphs) == 2
    model.cuda_graphs.clear()
    inputs = batches[0][0].cuda()
    model.predict(inputs, batches[0][1])  # gradients enabled: eager
    with torch.no_grad():
        model.train().predict(inputs, batches[0][1])  # training mode
    assert len(model.cuda_graphs) == 0
    model.eval()
    model.to('cpu')
    assert len(model.cuda_graphs) == 0  # stale addresses are forgotten
