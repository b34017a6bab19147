"""The auxiliary pyramid reaches mmcv's RoIAlign as dense NCHW maps.

Regression tests for a silent bug: the pyramid levels were strided views of
the (bs, S, C) encoder memory, and mmcv's RoIAlign reads ``data_ptr()`` as
dense NCHW, so the Faster R-CNN branch pooled the wrong elements (image 1
read image 0's memory) and trained worse than no auxiliary head at all.
"""
import pytest
import torch
from codetr_testing import build_model, make_batch, tiny_model_cfg
from mmdet.structures.bbox import bbox2roi

BOXES = (
    torch.tensor([[4., 6., 60., 50.], [30., 20., 90., 80.],
                  [0., 0., 120., 90.]]),
    torch.tensor([[10., 12., 50., 100.], [40., 8., 100., 60.]]),
)


@pytest.fixture(scope='module')
def model_and_memory():
    model = build_model(tiny_model_cfg())
    inputs, samples = make_batch(model, image_sizes=((96, 128), (112, 104)))
    with torch.no_grad():
        feats = model.extract_feat(inputs)
        memory = model.query_head.encode(feats, samples)['memory']
    return model, feats, memory


def pool(model, pyramid) -> torch.Tensor:
    """RoI features (num_rois, C, 7, 7) of BOXES with the RoI extractor."""
    extractor = model.roi_head[0].bbox_roi_extractor
    levels = pyramid[:extractor.num_inputs]
    return extractor(levels, bbox2roi(list(BOXES)))


def test_pyramid_levels_are_dense(model_and_memory):
    model, feats, memory = model_and_memory
    pyramid = model.query_head.memory_to_pyramid(memory, feats)
    assert len(pyramid) == len(feats) + 1
    for level, feat in zip(pyramid, feats):
        assert level.shape == feat.shape
        assert level.is_contiguous()


def test_roi_features_equal_those_of_contiguous_copies(model_and_memory):
    model, feats, memory = model_and_memory
    with torch.no_grad():
        pyramid = model.query_head.memory_to_pyramid(memory, feats)
        # the extractor alone, not the RoI head (whose forward guards too)
        pooled = pool(model, pyramid)
        reference = pool(model, [
            lvl.clone(memory_format=torch.contiguous_format) for lvl in pyramid
        ])
    assert pooled.abs().sum() > 0
    torch.testing.assert_close(pooled, reference, rtol=0, atol=0)


def test_image_1_features_do_not_depend_on_image_0(model_and_memory):
    model, feats, memory = model_and_memory
    changed = memory.clone()
    changed[0] = torch.randn_like(changed[0])
    with torch.no_grad():
        before = pool(model, model.query_head.memory_to_pyramid(memory, feats))
        after = pool(model, model.query_head.memory_to_pyramid(changed, feats))
    num_img0 = len(BOXES[0])
    # image 0's RoIs see the change, image 1's are bit-identical
    assert not torch.allclose(before[:num_img0], after[:num_img0])
    torch.testing.assert_close(
        before[num_img0:], after[num_img0:], rtol=0, atol=0)


def test_roi_head_pools_dense_maps_from_strided_input(model_and_memory):
    """The RoI head's own guard: a strided pyramid from another producer
    gives the same RoI features as its dense copy."""
    model, feats, memory = model_and_memory
    roi_head = model.roi_head[0]
    dense = model.query_head.memory_to_pyramid(memory, feats)
    strided = tuple(
        lvl.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        for lvl in dense)
    assert not any(lvl.is_contiguous() for lvl in strided[:4])
    rois = bbox2roi(list(BOXES))
    with torch.no_grad():
        out_dense = roi_head._bbox_forward(dense, rois)
        out_strided = roi_head._bbox_forward(strided, rois)
    for key in ('bbox_feats', 'cls_score', 'bbox_pred'):
        torch.testing.assert_close(
            out_strided[key], out_dense[key], rtol=0, atol=0)
