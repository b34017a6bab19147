"""Parity with the released Co-DETR code (and the official
DAB-Deformable-DETR code) on a GPU: mmcv's CUDA kernels (multi-scale
deformable attention, RoIAlign, NMS, sigmoid focal loss) give the golden
losses and detections (float32 golden data, ``tests/data/parity/``).

Bounds, with the values measured on an H200 (docs/testing.md). TF32 is
off (``torch.backends.cudnn.allow_tf32 = False``; torch's matrix products
are fp32 by default): the GPU then differs from the CPU that made the golden
data in its kernels' summation order, and in how ``torch.topk`` orders
ties:

- The seed-independent losses of Co-Deformable-DETR and Co-DINO's
  auxiliary branches (encoder, RPN, RoI, ATSS, auxiliary-query losses):
  within the CPU suite's 1e-4 (GPU_RTOL; measured up to 1.8e-5).
- Except where ATSS's candidate selection meets a tie: the k-th and
  (k+1)-th nearest anchor centres of a ground-truth box lie at exactly the
  same distance (a box centred between grid points; image 0 of the golden
  data has one, at 13.34 px). ``torch.topk`` breaks such ties in another
  order on CUDA than on the CPU, so another anchor becomes a candidate and
  the positives change: the ATSS losses and the auxiliary queries built
  from ATSS's positives (head 1: ``loss_*1``, ``*_aux1``) then get
  ATSS_TIE_RTOL. The released code calls the same ``topk``, so it would
  move the same way on a GPU.
- Co-DINO's query-head losses go through the top-900 selection of encoder
  tokens, whose float32 near-ties another summation order flips, as the
  released code's own batch size does: within that reproducibility
  (QUERY_HEAD_RTOL, 2e-3; measured up to 1.1e-3).
- Detections: Co-Deformable-DETR's within the CPU suite's exact bounds
  (EXACT: 1e-3 px, 1e-5 in score, none replaced; measured 2.9e-4 px,
  6e-7); Co-DINO's query head within the released code's own
  reproducibility (``BATCH_NOISE``: 0.2 px, 1e-3, 8 detections replaced;
  measured 0.1 px, 3.7e-4, 7), its RPN + RoI and ATSS heads within
  AUX_BOUND (measured 1.1e-3 px, 4e-7, none replaced).
- DAB-Deformable-DETR (no query selection): losses within GPU_RTOL,
  detections within EXACT.
- With torch's default TF32 convolutions (10-bit mantissa) the losses move
  further, and further still with the config switch ``tf32=True`` (float32
  matrix products in TF32 too); recorded (``tf32``, ``tf32_matmul``), so
  that the run shows by how much, not bounded.
"""
import contextlib

import codino_parity_data
import parity_data
import pytest
import torch
from gpu_testing import record, worst_compare
from test_codino_parity import (BATCH_NOISE, DECODER_LOSSES,
                                DETECTIONS_PER_IMAGE, total)

pytestmark = pytest.mark.gpu

GPU_RTOL = 1e-4
# The released float32 code's own query-head reproducibility: its decoder
# losses move by up to 1.0e-3 between its one- and three-image runs.
QUERY_HEAD_RTOL = 2e-3
# The CPU suite's exact bounds: px, score, detections replaced.
EXACT = dict(box=1e-3, score=1e-5, moved=0)
# measured on an H200: up to 2.6e-2 (Co-DINO d0.loss_cls_aux1, one image)
ATSS_TIE_RTOL = 5e-2
# boxes in px (images of up to 352 px), scores, detections replaced
AUX_BOUND = dict(box=1e-2, score=1e-4, moved=2)


@contextlib.contextmanager
def tf32(enabled: bool, matmul: bool = False):
    """cuDNN's convolutions in TF32 or not; ``matmul`` also runs torch's
    float32 matrix products in TF32 (the config switch ``tf32=True``, on
    top of torch's default TF32 convolutions)."""
    previous = (torch.backends.cudnn.allow_tf32,
                torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = matmul
    try:
        yield
    finally:
        (torch.backends.cudnn.allow_tf32,
         torch.backends.cuda.matmul.allow_tf32) = previous


def on_gpu(inputs, samples):
    return inputs.cuda(), [s.to('cuda') for s in samples]


def atss_ties(head, sizes, inputs, samples) -> int:
    """How many ground-truth boxes meet a distance tie at ATSS's top-k
    candidate cut in some level: the k-th and (k+1)-th nearest valid anchor
    centres at exactly the same distance (mmdet's ``ATSSAssigner`` rule,
    recomputed from the anchors of the feature map ``sizes`` the head saw,
    whichever assignment path the head takes)."""
    from mmdet.models.task_modules.assigners.atss_assigner import \
        bbox_center_distance
    anchors = head.prior_generator.grid_priors(sizes, device=inputs.device)
    per_level = [len(a) for a in anchors]
    topk = head.assigner.topk
    ties = 0
    for sample in samples:
        # allowed_border=-1: mmdet keeps the anchors of valid locations
        valid = torch.cat(head.prior_generator.valid_flags(
            sizes, sample.metainfo['pad_shape'][:2], inputs.device))
        distances = bbox_center_distance(sample.gt_instances.bboxes,
                                         torch.cat(anchors))
        for level, flags in zip(distances.split(per_level),
                                valid.split(per_level)):
            level = level[flags]
            if len(level) > topk:
                ranked = level.sort(dim=0)[0]
                ties += int((ranked[topk - 1] == ranked[topk]).sum())
    return ties


def losses(model, inputs, samples, seed: int = 0):
    """The summed losses, and how many ground-truth boxes meet a distance
    tie at ATSS's top-k candidate cut in some level (:func:`atss_ties`)."""
    from mmdet.models.dense_heads import ATSSHead
    heads = [h for h in model.bbox_head if isinstance(h, ATSSHead)]
    sizes = []
    hooks = [h.register_forward_pre_hook(
        lambda _, args: sizes.append([f.shape[-2:] for f in args[0]]))
        for h in heads]
    model.train()
    try:
        with torch.no_grad():
            torch.manual_seed(seed)
            result = {k: total(v)
                      for k, v in model.loss(inputs, samples).items()}
    finally:
        model.eval()
        for hook in hooks:
            hook.remove()
    ties = sum(atss_ties(h, s, inputs, samples)
               for h, s in zip(heads, sizes))
    return result, ties


def rtol(key: str, ties: int) -> float:
    """GPU_RTOL, or ATSS_TIE_RTOL for what depends on ATSS's positives
    when its candidate selection met a tie."""
    return ATSS_TIE_RTOL if ties and key.endswith('1') else GPU_RTOL


def per_class(model, inputs, samples, num_classes: int = 80):
    with torch.no_grad():
        results = model.predict(inputs, samples, rescale=False)
    return [
        parity_data.detections_per_class(
            r.pred_instances.bboxes.cpu(), r.pred_instances.scores.cpu(),
            r.pred_instances.labels.cpu(), num_classes) for r in results
    ]


def relative(ours: dict, gold: dict, keys) -> dict:
    return {k: abs(ours[k] - gold[k]) / max(abs(gold[k]), 1e-12)
            for k in keys}


# Co-Deformable-DETR -------------------------------------------------------
@pytest.fixture(scope='module')
def ddetr():
    model, _ = parity_data.filled_model()
    return model.cuda(), parity_data.golden()['results']


@pytest.mark.parametrize('num_images,tag', [(1, 'one'), (2, 'two')])
def test_ddetr_losses_match_the_released_code(ddetr, num_images, tag):
    model, gold = ddetr
    batch = on_gpu(*parity_data.golden_batch(num_images))
    keys = parity_data.deterministic_keys(num_images)
    with tf32(False):
        ours, ties = losses(model, *batch)
    with tf32(True):
        ours_tf32, _ = losses(model, *batch)
    with tf32(True, matmul=True):
        ours_tf32_matmul, _ = losses(model, *batch)
    diff = relative(ours, gold[f'{tag}_losses'], keys)
    diff_tf32 = relative(ours_tf32, gold[f'{tag}_losses'], keys)
    diff_matmul = relative(ours_tf32_matmul, gold[f'{tag}_losses'], keys)
    check_losses(f'parity Co-Deformable-DETR {tag}: losses', diff, ties,
                 tf32=max(diff_tf32.values()),
                 tf32_matmul=max(diff_matmul.values()))


def check_losses(name: str, diff: dict, ties: int, **extra) -> None:
    """Record the worst relative difference with and without the ATSS
    dependants; assert each key's bound."""
    atss = [k for k in diff if rtol(k, ties) == ATSS_TIE_RTOL]
    other = [k for k in diff if k not in atss]
    worst = max(other, key=diff.get)
    record(f'{name}, max relative', value=diff[worst], at=worst,
           bound=GPU_RTOL, atss_ties=ties,
           atss=max((diff[k] for k in atss), default=0.0), **extra)
    over = {k: v for k, v in diff.items() if v > rtol(k, ties)}
    assert not over, over


@pytest.mark.parametrize('num_images,tag', [(1, 'one'), (2, 'two')])
def test_ddetr_detections_match_the_released_code(ddetr, num_images, tag):
    model, gold = ddetr
    with tf32(False):
        ours = per_class(model, *on_gpu(*parity_data.golden_batch(
            num_images)))
    worst = worst_compare(ours, gold[f'{tag}_pred'])
    record(f'parity Co-Deformable-DETR {tag}: detections', **worst,
           bound=str(EXACT))
    assert all(worst[k] <= EXACT[k] for k in EXACT), worst


# Co-DINO -------------------------------------------------------------------
@pytest.fixture(scope='module')
def codino():
    model, _ = codino_parity_data.filled_model()
    return model.cuda(), codino_parity_data.golden()


@pytest.mark.parametrize('tag', ['one', 'three'])
def test_codino_losses_match_the_released_code(codino, tag):
    model, gold = codino
    batch = on_gpu(*codino_parity_data.golden_batch(tag))
    with tf32(False):
        ours, ties = losses(model, *batch)
    # the config switch tf32=True (with torch's TF32 convolutions):
    # recorded, not bounded
    with tf32(True, matmul=True):
        ours_tf32, _ = losses(model, *batch)
    keys = gold[tag]['deterministic']
    diff = relative(ours, gold[tag]['losses'], keys)
    diff_tf32 = relative(ours_tf32, gold[tag]['losses'], keys)
    query_head = [k for k in keys if k in DECODER_LOSSES]
    aux = [k for k in keys if k not in query_head]
    assert any('aux' in k for k in keys) or tag == 'three'
    check_losses(f'parity Co-DINO {tag}: auxiliary-branch losses',
                 {k: diff[k] for k in aux}, ties,
                 tf32_matmul=max(diff_tf32[k] for k in aux))
    worst = max(query_head, key=diff.get)
    record(f'parity Co-DINO {tag}: query-head losses, max relative',
           value=diff[worst], at=worst, bound=QUERY_HEAD_RTOL,
           tf32_matmul=max(diff_tf32[k] for k in query_head))
    assert diff[worst] <= QUERY_HEAD_RTOL, {k: diff[k] for k in query_head}


@pytest.mark.parametrize('eval_module', list(DETECTIONS_PER_IMAGE))
@pytest.mark.parametrize('tag', ['one', 'three'])
def test_codino_detections_match_the_released_code(codino, tag,
                                                   eval_module):
    model, gold = codino
    batch = on_gpu(*codino_parity_data.golden_batch(tag))
    model.eval_module = eval_module
    try:
        with tf32(False):
            ours = per_class(model, *batch)
        with tf32(True, matmul=True):
            ours_tf32 = per_class(model, *batch)
    finally:
        model.eval_module = 'detr'
    bound = BATCH_NOISE if eval_module == 'detr' else AUX_BOUND
    worst = worst_compare(ours, gold[tag]['pred'][eval_module])
    worst_tf32 = worst_compare(ours_tf32, gold[tag]['pred'][eval_module])
    record(f'parity Co-DINO {tag} {eval_module}: detections', **worst,
           bound=str(bound),
           tf32_matmul=' '.join(f'{k}={v:.3g}'
                                for k, v in worst_tf32.items()))
    assert all(worst[k] <= bound[k] for k in bound), (worst, bound)


# DAB-Deformable-DETR --------------------------------------------------------
@pytest.fixture(scope='module')
def dab():
    import dab_parity_data
    return dab_parity_data.dab_parity_model().cuda(), \
        dab_parity_data.dab_golden()


@pytest.mark.parametrize('num_images,tag', [(1, 'one'), (2, 'two')])
def test_dab_matches_the_official_code(dab, num_images, tag):
    """The official DAB-Deformable-DETR's float32 golden losses within
    GPU_RTOL and its detections (clamped to the image, as mmdet clamps)
    within EXACT: no query selection, so no top-k cut amplifies the CUDA
    kernels' summation order."""
    import dab_parity_data
    model, gold = dab
    inputs, samples = on_gpu(*parity_data.golden_batch(num_images))
    expected = dab_parity_data.weighted_losses(gold[tag]['losses'],
                                               gold['weight_dict'])
    model.train()
    try:
        with tf32(False), torch.no_grad():
            parts = model.loss(inputs, samples)
        ours = {k: float(v) for k, v in parts.items()}
    finally:
        model.eval()
    diff = relative(ours, expected, sorted(expected))
    record(f'parity DAB-Deformable-DETR {tag}: losses, max relative',
           value=max(diff.values()), bound=GPU_RTOL)
    assert all(v <= GPU_RTOL for v in diff.values()), diff
    with tf32(False):
        ours = per_class(model, inputs, samples)
    for image, (mine, gold_classes) in enumerate(zip(ours, gold[tag]['pred'])):
        height, width = samples[image].img_shape
        worst = parity_data.compare(
            mine, dab_parity_data.clamp_to_image(gold_classes, height, width))
        record(f'parity DAB-Deformable-DETR {tag} image {image}: '
               'detections', **worst, bound=str(EXACT))
        assert all(worst[k] <= EXACT[k] for k in EXACT), worst
