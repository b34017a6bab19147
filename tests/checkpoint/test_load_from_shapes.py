"""``LoadFromShapesHook``: fine-tuning from a checkpoint of another number
of classes names the class layers that keep their initialisation in one
log line (tests/gpu/test_gpu_checkpoints.py runs it through
tools/train.py)."""
import logging
from types import SimpleNamespace

from codetr_testing import build_model, tiny_model_cfg

from projects.codetr.engine.load_from_hook import (LoadFromShapesHook,
                                                   shape_mismatches)


def test_class_layers_of_another_number_of_classes_are_named(caplog):
    six = build_model(tiny_model_cfg(num_classes=6)).state_dict()
    model = build_model(tiny_model_cfg(num_classes=3))
    mismatched, loaded = shape_mismatches(
        {f'module.{k}': v for k, v in six.items()}, model.state_dict())
    assert mismatched and all(
        any(layer in k for layer in ('cls_branches', 'fc_cls', 'fc_reg',
                                     'atss_cls')) for k in mismatched)
    assert loaded == len(six) - len(mismatched)

    logger = logging.getLogger('load_from_test')
    runner = SimpleNamespace(model=model, logger=logger, _resume=False)
    with caplog.at_level(logging.WARNING, logger='load_from_test'):
        LoadFromShapesHook().after_load_checkpoint(runner,
                                                   {'state_dict': six})
        runner._resume = True  # a resumed checkpoint is not reported
        LoadFromShapesHook().after_load_checkpoint(runner,
                                                   {'state_dict': six})
    (record, ) = caplog.records
    assert record.getMessage().startswith(
        f'load_from: {len(mismatched)} tensors have other shapes')
    assert f'The other {loaded} tensors' in record.getMessage()
    assert all(k in record.getMessage() for k in mismatched)


def test_matching_checkpoint_logs_nothing(caplog):
    model = build_model(tiny_model_cfg())
    runner = SimpleNamespace(model=model, logger=logging.getLogger('x'),
                             _resume=False)
    with caplog.at_level(logging.WARNING):
        LoadFromShapesHook().after_load_checkpoint(
            runner, {'state_dict': model.state_dict()})
    assert not caplog.records
