"""One process of the multi-GPU checks (``tools/analysis/multi_gpu.py``).

Run by ``torch.distributed.run`` (one process per GPU, NCCL; gloo on CPU)
or as a single plain process. Builds a Co-DETR config's model with seeded
random weights (no downloads), wraps it as mmengine's runner does
(``MMDistributedDataParallel`` when distributed, the config's optim wrapper,
``AmpOptimWrapper`` with ``--amp``) and trains on generated images, so that
the figures are those of ``tools/train.py`` without its data loading.

Modes::

    scaling     median train-step time and peak memory at --per-gpu images
                per process (rank 0 writes the result)
    agreement   --total images split over the processes (same images, same
                weights whatever the number of processes); per step, each
                rank's losses and the mean over ranks, plus a digest of the
                weights after the step
    empty-rank  the last rank's images have no boxes; a few steps must
                finish on every rank with finite losses and identical
                weights (a hang is caught by the caller's timeout)

Every mode writes ``--out`` (JSON) from rank 0.
"""
import argparse
import json
import os
import os.path as osp
import statistics
import sys
import time
from typing import Dict, List

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from _plugin import REPO_ROOT, import_plugin  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('mode', choices=['scaling', 'agreement', 'empty-rank'])
    parser.add_argument('--config', default=osp.join(
        REPO_ROOT, 'configs', 'co_deformable_detr_r50_1x_coco.py'))
    parser.add_argument('--out', required=True, help='JSON result file')
    parser.add_argument('--amp', action='store_true')
    parser.add_argument('--size', type=int, nargs=2, default=[800, 1216],
                        metavar=('H', 'W'), help='image size (all equal)')
    parser.add_argument('--boxes', type=int, default=10,
                        help='random ground-truth boxes per image')
    parser.add_argument('--per-gpu', type=int, default=2,
                        help='scaling/empty-rank: images per process')
    parser.add_argument('--total', type=int, default=4,
                        help='agreement: images per step over all processes')
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--steps', type=int, default=20,
                        help='timed steps (scaling) or steps (others)')
    parser.add_argument('--seed', type=int, default=0,
                        help='torch seed set after building the model: it '
                        'drives the random proposal/RoI sampling only')
    parser.add_argument('--save-weights', metavar='FILE.pth',
                        help='agreement: save the weights after the steps')
    parser.add_argument('--no-dropout', action='store_true',
                        help='dropout off (p=0): with it on, each process '
                        'draws its own masks, so losses agree only in '
                        'distribution')
    parser.add_argument('--no-tf32', action='store_true',
                        help='full fp32 convolutions (cuDNN TF32 off), for '
                        'comparisons across batch shapes')
    return parser.parse_args()


class Dist:
    """This process's place: rank, world size, device."""

    def __init__(self) -> None:
        from mmengine.dist import get_dist_info
        self.distributed = int(os.environ.get('WORLD_SIZE', '1')) > 1
        cuda = torch.cuda.is_available()
        local = int(os.environ.get('LOCAL_RANK', '0'))
        self.device = torch.device(f'cuda:{local}' if cuda else 'cpu')
        if cuda:
            torch.cuda.set_device(self.device)
        if self.distributed:  # torchrun's env:// rendezvous
            torch.distributed.init_process_group(
                backend='nccl' if cuda else 'gloo')
        self.rank, self.world = get_dist_info()

    def gather(self, obj) -> list:
        """``obj`` of every rank, in rank order."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def sync(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)


def build(args: argparse.Namespace, dist: Dist):
    """Model (seeded random weights, DDP-wrapped when distributed) and its
    optim wrapper, both as the runner would build them from the config."""
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.model import MMDistributedDataParallel
    from mmengine.optim import build_optim_wrapper
    cfg = Config.fromfile(args.config, format_python_code=False)
    cfg.model.backbone.init_cfg = None  # offline: no pretrained download
    torch.manual_seed(0)  # same initial weights on every rank and run
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.to(dist.device)
    # As the train loop does: ResNet's train() keeps its BatchNorm in eval
    # mode (norm_eval); left in a fresh module's default mode, BN would use
    # batch statistics and tie each image's features to its batch.
    model.train()
    if args.no_dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    optim_cfg = cfg.optim_wrapper.copy()
    if args.amp:
        optim_cfg.type = 'AmpOptimWrapper'
        optim_cfg.setdefault('loss_scale', 'dynamic')
    optim_wrapper = build_optim_wrapper(model, optim_cfg)
    if dist.distributed:
        model = MMDistributedDataParallel(
            module=model,
            device_ids=[dist.device.index] if dist.device.type == 'cuda' else
            None,
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    torch.manual_seed(args.seed + dist.rank)
    return model, optim_wrapper, cfg.model.get('num_classes', 80)


def make_images(indices: List[int], size, boxes: int, num_classes: int,
                empty: bool = False) -> dict:
    """Generated images (uint8, CHW) and boxes (xyxy, pixels); image ``i``
    is the same whichever process makes it."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    h, w = size
    inputs, samples = [], []
    for i in indices:
        gen = torch.Generator().manual_seed(1000 + i)
        inputs.append(
            torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8))
        n = 0 if empty else boxes
        xy = torch.rand(n, 2, generator=gen) * torch.tensor([w, h]) * 0.7
        wh = (torch.rand(n, 2, generator=gen) * 0.25 + 0.03) * \
            torch.tensor([w, h])
        sample = DetDataSample(metainfo=dict(
            img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0),
            img_id=i))
        sample.gt_instances = InstanceData(
            bboxes=torch.cat([xy, xy + wh], 1),
            labels=torch.randint(0, num_classes, (n, ), generator=gen))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def train_step(model, data: dict, optim_wrapper) -> Dict[str, float]:
    """One optimisation step as ``IterBasedTrainLoop`` runs it."""
    log_vars = model.train_step(data, optim_wrapper=optim_wrapper)
    return {k: float(v.detach()) for k, v in log_vars.items()}


def weights_digest(model) -> List[float]:
    """Sum and sum of squares of all parameters (float64): equal across
    ranks iff DDP kept them in sync (to rounding)."""
    module = getattr(model, 'module', model)
    total = torch.zeros(2, dtype=torch.float64)
    for p in module.parameters():
        q = p.detach().double().cpu()
        total += torch.stack([q.sum(), (q * q).sum()])
    return total.tolist()


def run_scaling(args, dist, model, optim_wrapper, num_classes) -> dict:
    first = dist.rank * args.per_gpu
    data = make_images(range(first, first + args.per_gpu), args.size,
                       args.boxes, num_classes)
    times = []
    if dist.device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(dist.device)
    for step in range(args.warmup + args.steps):
        dist.sync()
        start = time.perf_counter()
        log_vars = train_step(model, data, optim_wrapper)
        dist.sync()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated(dist.device) / 2**30
            if dist.device.type == 'cuda' else 0.0)
    step_ms = dist.gather(1000 * statistics.median(times))
    return dict(
        world=dist.world, amp=args.amp, per_gpu=args.per_gpu,
        step_ms=max(step_ms),  # the slowest rank sets the pace
        img_per_s=dist.world * args.per_gpu / (max(step_ms) / 1000),
        peak_gib=dist.gather(peak), loss=log_vars['loss'])


def run_agreement(args, dist, model, optim_wrapper, num_classes) -> dict:
    if args.total % dist.world:
        raise SystemExit(f'--total {args.total} is not divisible by '
                         f'{dist.world} processes')
    per = args.total // dist.world
    data = make_images(range(dist.rank * per, (dist.rank + 1) * per),
                       args.size, args.boxes, num_classes)
    module = getattr(model, 'module', model)
    initial = {k: v.detach().cpu().clone()
               for k, v in module.state_dict().items()}
    steps = []
    for _ in range(args.steps):
        ranks = dist.gather(train_step(model, data, optim_wrapper))
        mean = {k: sum(r[k] for r in ranks) / len(ranks) for k in ranks[0]}
        steps.append(dict(mean=mean, ranks=ranks,
                          weights=weights_digest(model)))
    final = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    if args.save_weights and dist.rank == 0:
        torch.save(final, args.save_weights)
    moved = max((final[k].double() - initial[k].double()).abs().max().item()
                for k in final if final[k].is_floating_point())
    return dict(world=dist.world, per_gpu=per, total=args.total,
                amp=args.amp, seed=args.seed, steps=steps,
                max_weight_update=moved)


def run_empty_rank(args, dist, model, optim_wrapper, num_classes) -> dict:
    first = dist.rank * args.per_gpu
    empty = dist.rank == dist.world - 1 and dist.world > 1
    data = make_images(range(first, first + args.per_gpu), args.size,
                       args.boxes, num_classes, empty=empty)
    losses = []
    for _ in range(args.steps):
        losses.append(dist.gather(train_step(model, data, optim_wrapper)))
    digests = dist.gather(weights_digest(model))
    finite = all(
        torch.isfinite(torch.tensor(v)).item() for step in losses
        for rank in step for v in rank.values())
    return dict(world=dist.world, empty_rank=dist.world - 1,
                steps=len(losses), finite=finite, digests=digests,
                in_sync=all(d == digests[0] for d in digests),
                last_losses=losses[-1])


def main() -> None:
    args = parse_args()
    import_plugin()
    from mmdet.utils import register_all_modules
    register_all_modules()
    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    dist = Dist()
    model, optim_wrapper, num_classes = build(args, dist)
    run = dict(scaling=run_scaling, agreement=run_agreement)
    run['empty-rank'] = run_empty_rank
    result = run[args.mode](args, dist, model, optim_wrapper, num_classes)
    result['device'] = (torch.cuda.get_device_name(dist.device)
                        if dist.device.type == 'cuda' else 'cpu')
    if dist.rank == 0:
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=1)
    if dist.distributed:
        torch.distributed.destroy_process_group()


if __name__ == '__main__':
    main()
