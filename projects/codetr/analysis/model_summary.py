"""Parameter count and training-step time of a config's model.

A quick look at a config's model without data or downloads: the backbone's
pretrained weights are off, the batch is generated (:mod:`.synthetic`).
Used by ``tools/analysis/model_summary.py``.
"""
import statistics
import time
from typing import Sequence

import torch

from .synthetic import fake_batch


def summarize(config: str, img_size: Sequence[int], batch_size: int,
              boxes: int, steps: int, device: str, seed: int) -> None:
    """Print the parameters of ``config``'s model per top-level module, then
    time full training steps (forward, all losses, backward, AdamW step).

    Args:
        config (str): Config file of the model.
        img_size (Sequence[int]): ``(h, w)`` of the generated images.
        batch_size (int): Images per step.
        boxes (int): Ground-truth boxes per image.
        steps (int): Timed steps, after one warm-up step.
        device (str): Where the model runs, e.g. ``'cuda'``.
        seed (int): Seed of the weights and of the generated batch.
    """
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    register_all_modules()
    cfg = Config.fromfile(config)
    cfg.model.backbone.init_cfg = None  # no download
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model).to(device)
    model.init_weights()

    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f'config: {config}')
    print(f'parameters: {total / 1e6:.2f} M total, '
          f'{trainable / 1e6:.2f} M trainable')
    for name, child in model.named_children():
        n = sum(p.numel() for p in child.parameters())
        if n:
            print(f'  {name:<16}{n / 1e6:8.2f} M')

    model.train()
    optim = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=1e-4)
    # min_box=0.05: this summary's boxes were always a little larger than
    # the benchmark's; kept so its timings stay comparable with earlier runs
    inputs, samples = fake_batch(model, batch_size, img_size, boxes,
                                 training=True, seed=seed, min_box=0.05)
    times = []
    for step in range(steps + 1):
        if device.startswith('cuda'):
            torch.cuda.synchronize()
        start = time.perf_counter()
        losses = model.loss(inputs, samples)
        loss, _ = model.parse_losses(losses)
        optim.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optim.step()
        if device.startswith('cuda'):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if step > 0:  # step 0 is warm-up
            times.append(elapsed)
        print(f'  step {step}{" (warm-up)" if step == 0 else ""}: '
              f'{elapsed:.2f} s, loss {loss.item():.3f}, '
              f'{len(losses)} loss entries')
    print(f'train step: median {statistics.median(times):.2f} s over '
          f'{len(times)} steps (batch {batch_size} x '
          f'{img_size[0]}x{img_size[1]}, {device}, '
          f'{torch.get_num_threads()} threads)')
