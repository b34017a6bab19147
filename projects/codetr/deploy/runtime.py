"""The exported graph at run time: its check, ONNX Runtime sessions and a
detector that runs a graph on image files with the config's preprocessing.

Used by ``tools/deploy/export_onnx.py`` (:func:`check_graph`) and
``tools/deploy/infer_onnx.py`` (:class:`OnnxDetector`). ``onnx`` and
``onnxruntime`` (``requirements/deploy.txt``) are imported by the functions
that need them only.
"""
from typing import Dict

import numpy as np


def check_graph(path: str) -> None:
    """``onnx.checker`` and a list of op types; no custom domain allowed."""
    import onnx
    model = onnx.load(path)
    onnx.checker.check_model(model)
    ops = sorted({(n.domain or 'ai.onnx', n.op_type)
                  for n in model.graph.node})
    custom = [f'{d}::{t}' for d, t in ops if d != 'ai.onnx']
    if custom:
        raise ValueError(f'the graph contains custom ops {custom}; ONNX '
                         'Runtime cannot run them')
    print(f'onnx.checker passed; {len(model.graph.node)} nodes, op types: '
          + ' '.join(t for _, t in ops))


def make_session(path: str, device: str):
    """An ``InferenceSession`` on the requested provider."""
    import onnxruntime as ort
    available = ort.get_available_providers()
    providers = ['CPUExecutionProvider']
    if device != 'cpu' and 'CUDAExecutionProvider' in available:
        providers.insert(0, 'CUDAExecutionProvider')
    elif device == 'cuda':
        raise ValueError('--device cuda: this onnxruntime has no '
                         'CUDAExecutionProvider (install onnxruntime-gpu)')
    return ort.InferenceSession(path, providers=providers)


class OnnxDetector:
    """Config preprocessing + ONNX Runtime + rescaling to the original.

    Args:
        model_path (str): The exported ``.onnx`` file.
        cfg (Config): Its config.
        device (str): ``'auto'``, ``'cpu'`` or ``'cuda'``.
    """

    def __init__(self, model_path: str, cfg, device: str = 'auto') -> None:
        from mmcv.transforms import Compose
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        register_all_modules()
        pipeline = [
            t for t in cfg.test_dataloader.dataset.pipeline
            if t['type'] != 'LoadAnnotations'
        ]
        self.pipeline = Compose(pipeline)
        self.preprocessor = MODELS.build(cfg.model.data_preprocessor)
        self.session = make_session(model_path, device)

    def __call__(self, image_path: str):
        """Detections of one image file.

        Returns:
            DetDataSample: ``pred_instances`` with ``bboxes`` (k, 4)
            (x1, y1, x2, y2) in original-image pixels, ``scores`` (k, ),
            ``labels`` (k, ).
        """
        import torch
        from mmengine.structures import InstanceData
        data = self.pipeline(dict(img_path=image_path, img_id=0))
        data = self.preprocessor(
            dict(inputs=[data['inputs']], data_samples=[data['data_samples']]),
            training=False)
        sample = data['data_samples'][0]
        sizes = np.array([sample.img_shape], dtype=np.int64)
        boxes, scores, labels = self.session.run(None, {
            'inputs': data['inputs'].numpy().astype(np.float32),
            'img_sizes': sizes
        })
        scale = np.tile(np.asarray(sample.scale_factor, np.float32), 2)
        sample.pred_instances = InstanceData(
            bboxes=torch.from_numpy(boxes[0] / scale),
            scores=torch.from_numpy(scores[0]),
            labels=torch.from_numpy(labels[0]))
        return sample


def dataset_meta(cfg) -> Dict:
    """Class names (and palette) of the config's test dataset."""
    from mmdet.registry import DATASETS
    dataset = cfg.test_dataloader.dataset
    meta = dict(DATASETS.get(dataset['type']).METAINFO)
    meta.update(dataset.get('metainfo') or {})
    return meta
