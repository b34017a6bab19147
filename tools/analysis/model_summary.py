"""Parameter count and training-step time of a config's model.

Builds the model of CONFIG (pretrained weights off, so nothing is
downloaded), prints its parameters per top-level module, then times full
training steps (forward, all losses, backward, AdamW step) on generated
images and boxes.

Example::

    python tools/analysis/model_summary.py \
        configs/co_deformable_detr_r50_1x_coco.py --img-size 512 --steps 3
"""
import argparse
import os.path as osp
import statistics
import sys
import time

import torch
from mmengine.config import Config

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from _plugin import import_plugin  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('--img-size', type=int, nargs=2, default=[512, 512],
                        metavar=('H', 'W'))
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument('--boxes', type=int, default=8,
                        help='ground-truth boxes per image')
    parser.add_argument('--steps', type=int, default=3,
                        help='timed steps (after one warm-up step)')
    parser.add_argument('--device', default='cuda' if
                        torch.cuda.is_available() else 'cpu')
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args()


def fake_batch(model, batch_size, size, num_boxes, device, seed):
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    inputs, samples = [], []
    num_classes = model.num_classes
    for _ in range(batch_size):
        inputs.append(torch.randint(0, 256, (3, h, w), generator=gen,
                                    dtype=torch.uint8))
        xy = torch.rand(num_boxes, 2, generator=gen) * torch.tensor(
            [w, h]) * 0.7
        wh = (torch.rand(num_boxes, 2, generator=gen) * 0.25 + 0.05) * \
            torch.tensor([w, h])
        sample = DetDataSample(metainfo=dict(
            img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0)))
        sample.gt_instances = InstanceData(
            bboxes=torch.cat([xy, xy + wh], 1),
            labels=torch.randint(0, num_classes, (num_boxes, ),
                                 generator=gen))
        samples.append(sample)
    data = model.data_preprocessor(
        dict(inputs=[i.to(device) for i in inputs], data_samples=samples),
        training=True)
    return data['inputs'], data['data_samples']


def main() -> None:
    args = parse_args()
    import_plugin()
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(args.config)
    cfg.model.backbone.init_cfg = None  # no download
    torch.manual_seed(args.seed)
    model = MODELS.build(cfg.model).to(args.device)
    model.init_weights()

    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f'config: {args.config}')
    print(f'parameters: {total / 1e6:.2f} M total, '
          f'{trainable / 1e6:.2f} M trainable')
    for name, child in model.named_children():
        n = sum(p.numel() for p in child.parameters())
        if n:
            print(f'  {name:<16}{n / 1e6:8.2f} M')

    model.train()
    optim = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=1e-4)
    inputs, samples = fake_batch(model, args.batch_size, args.img_size,
                                 args.boxes, args.device, args.seed)
    times = []
    for step in range(args.steps + 1):
        if args.device.startswith('cuda'):
            torch.cuda.synchronize()
        start = time.perf_counter()
        losses = model.loss(inputs, samples)
        loss, _ = model.parse_losses(losses)
        optim.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optim.step()
        if args.device.startswith('cuda'):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if step > 0:  # step 0 is warm-up
            times.append(elapsed)
        print(f'  step {step}{" (warm-up)" if step == 0 else ""}: '
              f'{elapsed:.2f} s, loss {loss.item():.3f}, '
              f'{len(losses)} loss entries')
    print(f'train step: median {statistics.median(times):.2f} s over '
          f'{len(times)} steps (batch {args.batch_size} x '
          f'{args.img_size[0]}x{args.img_size[1]}, {args.device}, '
          f'{torch.get_num_threads()} threads)')


if __name__ == '__main__':
    main()
