"""Every model family, shrunk, on a GPU: AMP training steps and inference
in fp32, fp16 (autocast) and from CUDA graphs; mmdet's ``DetInferencer``.

Families: Co-Deformable-DETR with K=0, 2 and 3 auxiliary heads, Co-DINO
(K=2), DAB-Deformable-DETR (K=0 and K=2) and a Swin backbone, each shrunk
by ``tests/zoo_testing.py`` (only
sizes change). Training: TRAIN_STEPS steps of the config's optimizer
under mmengine's ``AmpOptimWrapper`` on one fixed batch; every loss stays
finite and the loss comes down. Inference is compared with the eager fp32
detections, detection by detection (``test_codino_parity.compare``: per
class, paired by box; a detection that another one replaced at the top-k
cut counts as moved):

- CUDA graphs replay the eager kernels: equal within GRAPH_BOUND (what a
  re-run of the eager model gives: nothing moves).
- fp16 (``torch.autocast``): the backbone, projections and heads run in
  half precision, the deformable-attention sampling and the
  post-processing in fp32. The two-stage families select their queries by
  a top-k of the encoder's scores, whose near ties fp16 can reorder, and
  with mixed query selection (Co-Deformable-DETR and Co-DINO) a query's
  content embedding belongs to its rank: one reordered pair moved the
  trained models' sorted scores by up to 0.057 and paired scores by up to
  0.083 on an H200, by amounts that vary from training to training (the
  GPU's atomics make every run's weights differ), and given the fp32
  order they moved by at most 4.2e-4 (19 measurements: 12 trainings of
  4 families and a suite run of all 7). The numerical path is therefore
  compared with the fp32 run's selection replayed in the fp16 run
  (``SelectionReplay``):
  the sorted scores of each image move by at most
  FP16_REPLAYED_SCORE_ATOL and at most FP16_REPLAYED_MOVED_FRACTION of the
  detections are replaced. Without the replay, paired detections lie
  within the pairing radius (1 px) and at most FP16_MOVED_FRACTION of the
  detections are replaced by others.

Co-DINO's fp16 inference stopped with ``RuntimeError: expected scalar type
Float but found Half`` before the query head handed float32 boxes and
scores to its soft-NMS (mmcv's CPU kernel reads float32 only).
"""
import copy
from contextlib import contextmanager
from typing import Optional

import numpy as np
import pytest
import torch
from codetr_testing import REPO_ROOT, build_model, load_config, make_batch
from gpu_testing import record, worst_compare
from zoo_testing import shrink_model_cfg

from projects.codetr.models.detectors.cuda_graphs import CudaGraphCache

pytestmark = pytest.mark.gpu

FAMILIES = {
    'k0': 'configs/co_deformable_detr_r50_1x_coco_k0.py',
    'k2': 'configs/co_deformable_detr_r50_1x_coco.py',
    'k3': 'configs/co_deformable_detr_r50_1x_coco_k3_fcos.py',
    'codino': 'configs/co_dino_5scale_r50_1x_coco.py',
    'swin': 'configs/co_deformable_detr_swin_tiny_1x_coco.py',
    'dab_k0': 'configs/dab_deformable_detr_r50_50e_coco.py',
    'dab_k2': 'configs/co_dab_deformable_detr_r50_1x_coco.py',
}
NUM_CLASSES = 3
# 40 queries x 3 classes >= the 100 detections the test configs keep
NUM_QUERY = 40
TRAIN_STEPS = 20
LR = 5e-4
GRAPH_BOUND = dict(box=1e-3, score=1e-5, moved=0)
# fp16 against fp32: scores (sorted per image), the share of detections
# that other ones replaced (the untrained heads' scores are close together)
FP16_SCORE_ATOL = 5e-2
FP16_MOVED_FRACTION = 0.5
# the same given the fp32 run's query selection: ~10x the worst of 19
# measurements on an H200 (4.2e-4, none replaced); the replaced share
# allows near-tied final scores at the top-k cut
FP16_REPLAYED_SCORE_ATOL = 5e-3
FP16_REPLAYED_MOVED_FRACTION = 0.05


@pytest.fixture(scope='module', params=sorted(FAMILIES))
def family(request):
    """(name, config, model trained TRAIN_STEPS AMP steps, its losses)."""
    name = request.param
    cfg = load_config(f'{REPO_ROOT}/{FAMILIES[name]}')
    model_cfg = shrink_model_cfg(copy.deepcopy(cfg.model), NUM_CLASSES,
                                 NUM_QUERY)
    model = build_model(model_cfg).cuda()
    losses = train_amp(model, cfg)
    return name, cfg, model_cfg, model.eval(), losses


def train_amp(model, cfg, steps: int = TRAIN_STEPS):
    """``steps`` AMP steps on one batch; the total loss of each step."""
    from mmengine.optim import build_optim_wrapper
    wrapper_cfg = copy.deepcopy(cfg.optim_wrapper)
    wrapper_cfg.update(type='AmpOptimWrapper', loss_scale='dynamic')
    wrapper_cfg.optimizer.lr = LR
    optim_wrapper = build_optim_wrapper(model, wrapper_cfg)
    model.train()
    inputs, samples = make_batch(model, num_classes=NUM_CLASSES)
    assert inputs.is_cuda
    totals = []
    for _ in range(steps):
        with optim_wrapper.optim_context(model):
            parts = model.loss(inputs, samples)
            loss, _ = model.parse_losses(parts)
        bad = [k for k, v in parts.items()
               if not all(torch.isfinite(t).all() for t in
                          (v if isinstance(v, (list, tuple)) else [v]))]
        assert not bad, f'non-finite losses: {bad}'
        optim_wrapper.update_params(loss)
        totals.append(float(loss))
    return totals


def test_amp_training_steps_lower_the_loss(family):
    name, _, _, _, losses = family
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    record(f'{name}: AMP training, mean loss of steps 16-20 / 1-5',
           value=last / first)
    assert last < first, losses


def detections(model, inputs, samples, fp16: bool = False,
               graphs: int = 0):
    """Per image, per class (n, 5) [x1, y1, x2, y2, score] on the CPU."""
    model.cuda_graphs = CudaGraphCache(graphs) if graphs else None
    try:
        with torch.no_grad(), torch.autocast('cuda', torch.float16,
                                             enabled=fp16):
            for _ in range(2 if graphs else 1):  # capture, then replay
                results = model.predict(inputs, samples, rescale=False)
        if graphs:
            assert len(model.cuda_graphs) == 1
    finally:
        model.cuda_graphs = None
    out = []
    for r in results:
        pred = r.pred_instances
        # float32 whatever the autocast dtype: the post-processing's input
        assert pred.bboxes.dtype == pred.scores.dtype == torch.float32
        dets = torch.cat([pred.bboxes, pred.scores[:, None]], 1).cpu()
        labels = pred.labels.cpu()
        out.append([dets[labels == c] for c in range(NUM_CLASSES)])
    return out


def sorted_score_difference(ours, reference) -> float:
    """Largest difference of the sorted scores of each image, however the
    detections are paired (soft-NMS may keep a different number)."""
    score = 0.0
    for mine, theirs in zip(ours, reference):
        mine = torch.cat(mine)[:, 4].sort(descending=True)[0]
        theirs = torch.cat(theirs)[:, 4].sort(descending=True)[0]
        n = min(len(mine), len(theirs))
        if n:
            score = max(score, float((mine[:n] - theirs[:n]).abs().max()))
    return score


def check_fp16(name: str,
               what: str,
               ours,
               reference,
               score_atol: Optional[float] = FP16_SCORE_ATOL,
               moved_fraction: float = FP16_MOVED_FRACTION) -> None:
    """fp16 detections against fp32 ones (see the module's docstring):
    the detections moved, and the sorted scores unless ``score_atol`` is
    None."""
    worst = worst_compare(ours, reference)
    score = sorted_score_difference(ours, reference)
    count = sum(len(c) for image in reference for c in image)
    assert count > 0
    record(f'{name}: {what} vs eager fp32', sorted_score=score,
           moved=worst['moved'], of=count, paired_box=worst['box'],
           paired_score=worst['score'])
    if score_atol is not None:
        assert score <= score_atol, score
    assert worst['moved'] <= moved_fraction * count, worst


class SelectionReplay:
    """Records the query selection (``torch.topk`` of the two-stage
    transformers, the one call of the function in a prediction: the heads
    call the tensor method) of one prediction and hands it to the next."""

    def __init__(self, monkeypatch):
        self.topk = torch.topk
        self.saved = []
        self.mode = None
        monkeypatch.setattr(torch, 'topk', self)

    def __call__(self, input, k, *args, **kwargs):
        if self.mode == 'replay':
            index = self.saved.pop(0)
            assert index.shape[-1] == k
            return torch.gather(input, -1, index), index
        values, index = self.topk(input, k, *args, **kwargs)
        if self.mode == 'record':
            self.saved.append(index)
        return values, index

    @contextmanager
    def recording(self):
        self.mode, self.saved = 'record', []
        try:
            yield
        finally:
            self.mode = None

    @contextmanager
    def replaying(self):
        self.mode = 'replay'
        try:
            yield
        finally:
            self.mode = None
        assert not self.saved  # every recorded selection was replayed


@pytest.fixture(scope='module')
def batch(family):
    model = family[3]
    # image 1 is padded: the masks of the padded batch are part of the graph
    return make_batch(model, image_sizes=((96, 128), (128, 112)), seed=3,
                      training=False)


@pytest.mark.parametrize('mode', ['cuda_graphs', 'fp16', 'fp16+cuda_graphs'])
def test_inference_matches_eager_fp32(family, batch, mode, monkeypatch):
    name, _, _, model, _ = family
    inputs, samples = batch
    selection = SelectionReplay(monkeypatch)
    with selection.recording():
        reference = detections(model, inputs, samples)
    assert sum(len(c) for image in reference for c in image) > 0
    # one query selection per prediction in the two-stage transformers
    two_stage = model.query_head.transformer.as_two_stage
    assert len(selection.saved) == int(two_stage)
    again = worst_compare(detections(model, inputs, samples), reference)
    assert again == dict(box=0.0, score=0.0, moved=0)  # eager reproduces
    fp16 = mode.startswith('fp16')
    ours = detections(model, inputs, samples, fp16=fp16,
                      graphs=2 if 'graphs' in mode else 0)
    if fp16:
        eager = detections(model, inputs, samples, fp16=True)
    else:
        eager = reference
    if mode == 'fp16':
        # the fp16 numbers given the fp32 queries, then the detections
        # with fp16's own selection
        with selection.replaying():
            replayed = detections(model, inputs, samples, fp16=True)
        check_fp16(name, 'inference fp16, fp32 query selection', replayed,
                   reference, FP16_REPLAYED_SCORE_ATOL,
                   FP16_REPLAYED_MOVED_FRACTION)
        check_fp16(name, 'inference fp16', ours, reference, score_atol=None)
    # the graph replays eager inference of the same precision
    worst = worst_compare(ours, eager)
    record(f'{name}: inference {mode} vs eager of its precision', **worst)
    assert all(worst[k] <= GRAPH_BOUND[k] for k in GRAPH_BOUND), worst


@pytest.mark.parametrize('eval_module', ['one-stage', 'two-stage'])
def test_auxiliary_heads_infer_in_fp16(family, batch, eval_module):
    name, _, _, model, _ = family
    heads = model.bbox_head if eval_module == 'one-stage' else model.roi_head
    if not len(heads):
        pytest.skip(f'{name} has no {eval_module} head')
    inputs, samples = batch
    model.eval_module = eval_module
    try:
        reference = detections(model, inputs, samples)
        ours = detections(model, inputs, samples, fp16=True)
    finally:
        model.eval_module = 'detr'
    check_fp16(name, f'{eval_module} inference fp16', ours, reference)


@pytest.mark.parametrize('name', ['k2', 'codino'])
def test_det_inferencer_draws_detections_on_the_gpu(name, tmp_path):
    import cv2
    from mmdet.apis import DetInferencer
    cfg = load_config(f'{REPO_ROOT}/{FAMILIES[name]}')
    data_preprocessor = cfg.model.data_preprocessor
    cfg.model = shrink_model_cfg(cfg.model, NUM_CLASSES, NUM_QUERY)
    cfg.model.data_preprocessor = data_preprocessor
    cfg.test_dataloader.dataset.metainfo = dict(classes=('a', 'b', 'c'))
    inferencer = DetInferencer(model=cfg, weights=None, device='cuda',
                               show_progress=False)
    assert next(inferencer.model.parameters()).is_cuda
    # without weights mmdet leaves the model as constructed: parameters
    # that only init_weights fills (level_embed, torch.empty) hold whatever
    # memory they got, and non-finite values there make the boxes NaN
    torch.manual_seed(0)
    inferencer.model.init_weights()
    image = np.random.default_rng(0).integers(0, 256, (96, 128, 3),
                                              dtype=np.uint8)
    path = str(tmp_path / 'image.png')  # lossless: drawn pixels show
    cv2.imwrite(path, image)
    out = inferencer(path, out_dir=str(tmp_path / 'out'), no_save_pred=False,
                     pred_score_thr=0.0)
    (pred, ) = out['predictions']
    assert 0 < len(pred['bboxes']) == len(pred['scores'])
    drawn = cv2.imread(str(tmp_path / 'out' / 'vis' / 'image.png'))
    assert drawn is not None and drawn.shape == image.shape
    assert (drawn != image).any()  # the boxes
    assert (tmp_path / 'out' / 'preds' / 'image.json').is_file()
