"""Run an exported Co-DETR ONNX graph with ONNX Runtime on image files.

::

    python tools/deploy/infer_onnx.py MODEL.onnx CONFIG IMAGE... \\
        --out-dir DIR [--score-thr 0.3]

Preprocessing is the config's: its test pipeline (``LoadImageFromFile``,
``Resize``, ``PackDetInputs``; annotation loading is dropped) and the
model's ``DetDataPreprocessor`` (mean/std, BGR->RGB, padding), one image
per run. Writes what ``DetInferencer(...)(imgs, out_dir=DIR)`` writes:
``DIR/vis/<file name>`` with the detections of score >= ``--score-thr``
drawn, and ``DIR/preds/<stem>.json`` with all top-k ``labels``, ``scores``
and ``bboxes`` ((x1, y1, x2, y2) in original-image pixels). The CUDA
provider is used when ONNX Runtime has it, else the CPU.
"""
import argparse
import os
import os.path as osp
import sys
from typing import Dict, List, Optional

import numpy as np

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from _plugin import PluginImportError, import_plugin  # noqa: E402


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='ONNX Runtime inference of an exported Co-DETR.')
    parser.add_argument('model', metavar='MODEL.onnx')
    parser.add_argument('config', help='the config the model was exported '
                        'from (test pipeline, preprocessing, classes)')
    parser.add_argument('images', nargs='+', metavar='IMAGE')
    parser.add_argument('--out-dir', required=True,
                        help='writes DIR/vis/*.jpg and DIR/preds/*.json')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='lowest score drawn (default 0.3, as '
                        'DetInferencer); the json keeps all detections')
    parser.add_argument('--device', choices=['auto', 'cpu', 'cuda'],
                        default='auto',
                        help='auto: CUDA provider when available')
    return parser.parse_args(argv)


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


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        import_plugin()
    except PluginImportError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    import mmcv
    import mmengine
    from mmdet.registry import VISUALIZERS
    from mmengine.config import Config
    missing = [p for p in [args.model, *args.images] if not osp.isfile(p)]
    if missing:
        print(f'error: file(s) not found: {missing}', file=sys.stderr)
        return 1
    cfg = Config.fromfile(args.config)
    try:
        detector = OnnxDetector(args.model, cfg, args.device)
    except ValueError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    visualizer = VISUALIZERS.build(
        dict(cfg.visualizer, name='infer_onnx', vis_backends=None))
    visualizer.dataset_meta = dataset_meta(cfg)
    os.makedirs(osp.join(args.out_dir, 'preds'), exist_ok=True)
    for path in args.images:
        sample = detector(path)
        name = osp.basename(path)
        pred = sample.pred_instances.numpy()
        mmengine.dump(
            dict(labels=pred.labels.tolist(), scores=pred.scores.tolist(),
                 bboxes=pred.bboxes.tolist()),
            osp.join(args.out_dir, 'preds', osp.splitext(name)[0] + '.json'))
        img = mmcv.imread(path)[:, :, ::-1]  # RGB, as DetInferencer
        visualizer.add_datasample(
            name, img, sample, draw_gt=False,
            pred_score_thr=args.score_thr,
            out_file=osp.join(args.out_dir, 'vis', name))
        kept = int((pred.scores >= args.score_thr).sum())
        print(f'{path}: {kept} detections >= {args.score_thr} '
              f'(providers {detector.session.get_providers()[0]})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
