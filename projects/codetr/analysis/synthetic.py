"""Generated inputs: random images with random boxes, preprocessed.

The speed and host-read measurements need a batch of a given size, not
real data, so nothing is downloaded or read from disk.
"""
from typing import List, Sequence, Tuple

import torch


def fake_batch(model: torch.nn.Module,
               batch_size: int,
               size: Sequence[int],
               num_boxes: int,
               training: bool,
               seed: int = 0,
               min_box: float = 0.03) -> Tuple[torch.Tensor, List]:
    """A preprocessed batch of random uint8 images with random boxes.

    Args:
        model (nn.Module): The detector; its ``data_preprocessor`` pads,
            normalises and moves the batch to the model's device.
        batch_size (int): Number of images.
        size (Sequence[int]): ``(h, w)`` of every image.
        num_boxes (int): Ground-truth boxes per image.
        training (bool): Passed to the data preprocessor.
        seed (int): Seed of the generator of images, boxes and labels.
        min_box (float): Smallest box side as a fraction of the image side
            (boxes span ``min_box`` to ``min_box + 0.25`` of it).

    Returns:
        tuple[Tensor, list[DetDataSample]]: The preprocessed inputs and
        data samples.
    """
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    num_classes = getattr(model, 'num_classes', None)
    for head in ('bbox_head', 'query_head'):  # mmdet's detectors
        num_classes = num_classes or getattr(
            getattr(model, head, None), 'num_classes', None)
    inputs, samples = [], []
    for _ in range(batch_size):
        inputs.append(
            torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8))
        xy = torch.rand(
            num_boxes, 2, generator=gen) * torch.tensor([w, h]) * 0.7
        wh = (torch.rand(num_boxes, 2, generator=gen) * 0.25 + min_box) * \
            torch.tensor([w, h])
        sample = DetDataSample(
            metainfo=dict(
                img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0)))
        sample.gt_instances = InstanceData(
            bboxes=torch.cat([xy, xy + wh], 1),
            labels=torch.randint(0, num_classes, (num_boxes, ), generator=gen))
        samples.append(sample)
    data = model.data_preprocessor(
        dict(inputs=inputs, data_samples=samples), training=training)
    return data['inputs'], data['data_samples']
