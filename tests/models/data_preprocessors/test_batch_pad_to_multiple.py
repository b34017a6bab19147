"""BatchPadToMultiple: training batches padded to a multiple of a size,
with the metainfo the padding masks are built from; test batches as
DetDataPreprocessor pads them."""
import pytest
import torch
from mmdet.models.data_preprocessors import DetDataPreprocessor
from mmdet.structures import DetDataSample

from projects.codetr.models import BatchPadToMultiple
from projects.codetr.models.transformers import CoTransformerBase


def batch(sizes):
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8,
                            generator=gen) for h, w in sizes]
    samples = [DetDataSample(metainfo=dict(img_shape=s, ori_shape=s))
               for s in sizes]
    return dict(inputs=inputs, data_samples=samples)


def preprocessor(size_divisor):
    return DetDataPreprocessor(
        mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True, pad_size_divisor=1,
        batch_augments=[dict(type='BatchPadToMultiple',
                             size_divisor=size_divisor)])


def test_training_batches_are_padded_to_the_multiple():
    data = batch([(100, 150), (120, 90)])
    plain = DetDataPreprocessor(
        mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True)(batch([(100, 150), (120, 90)]), training=True)
    out = preprocessor(64)(data, training=True)
    inputs, samples = out['inputs'], out['data_samples']
    assert inputs.shape == (2, 3, 128, 192)
    # the images and mmdet's own padding unchanged, zeros added after them
    assert torch.equal(inputs[:, :, :120, :150], plain['inputs'])
    assert (inputs[:, :, 120:] == 0).all() and (inputs[..., 150:] == 0).all()
    for sample, shape in zip(samples, [(100, 150), (120, 90)]):
        assert sample.img_shape == shape
        assert sample.batch_input_shape == (128, 192)
        assert sample.pad_shape == (128, 192)
    # the padding masks of the transformer cover the added pixels
    feats = (inputs.new_zeros(2, 4, 16, 24), )
    mask = CoTransformerBase.level_masks(feats, samples)[0]
    assert mask[0, :13, :19].logical_not().all() and mask[0, 13:].all() \
        and mask[0, :, 19:].all()
    assert mask[1, :15, :12].logical_not().all() and mask[1, :, 12:].all()


def test_a_batch_already_at_the_multiple_and_test_batches_are_unchanged():
    out = preprocessor(32)(batch([(64, 96), (64, 96)]), training=True)
    assert out['inputs'].shape[-2:] == (64, 96)
    assert out['data_samples'][0].batch_input_shape == (64, 96)
    out = preprocessor(128)(batch([(100, 150)]), training=False)
    assert out['inputs'].shape[-2:] == (100, 150)


def test_size_divisor_must_be_positive():
    with pytest.raises(ValueError, match='size_divisor'):
        BatchPadToMultiple(0)
