"""Shrunk copies of the real configs and fake batches for CPU tests."""
import os.path as osp
from typing import Optional, Sequence, Tuple

import torch
from mmdet.structures import DetDataSample
from mmengine.config import Config, ConfigDict
from mmengine.structures import InstanceData
from torch.utils._python_dispatch import TorchDispatchMode

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
R50_CONFIG = osp.join(REPO_ROOT, 'configs',
                      'co_deformable_detr_r50_1x_coco.py')
# ops that wait for the device when run on a GPU
WAITING_OPS = ('nonzero', '_local_scalar_dense', 'masked_select', 'unique')


class WaitCounter(TorchDispatchMode):
    """Counts the dispatched ops that would make the host wait on a GPU
    (the CPU dispatches them alike); ``waits`` lists their names."""

    def __init__(self) -> None:
        super().__init__()
        self.waits = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split('.')[0]
        if name in WAITING_OPS:
            self.waits.append(name)
        return func(*args, **(kwargs or {}))


class OpCounter(TorchDispatchMode):
    """Counts the dispatches of one aten op (``OP``, e.g. ``'_to_copy'``)
    in ``count``."""

    OP = ''

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split('.')[0] == self.OP:
            self.count += 1
        return func(*args, **(kwargs or {}))


class HostDataCounter(OpCounter):
    """Counts the tensors made from host data (``new_tensor``,
    ``torch.tensor``): on a GPU each is a copy from the host, which
    synchronises unless it comes from pinned memory without blocking."""

    OP = 'lift_fresh'


class CastCounter(OpCounter):
    """Counts the dtype casts dispatched (``_to_copy``); on a GPU each is a
    kernel launch."""

    OP = '_to_copy'


def load_config(path: str = R50_CONFIG) -> Config:
    """The real config file, parsed by mmengine."""
    return Config.fromfile(path)


def tiny_model_cfg(path: str = R50_CONFIG,
                   num_classes: int = 3,
                   num_query: int = 10,
                   enc_layers: int = 1,
                   dec_layers: int = 2) -> ConfigDict:
    """The model config of ``path`` shrunk for CPU tests.

    Only sizes change (ResNet-18 with 16 base channels, few layers/queries,
    small RoI head and samplers, no pretrained weights): the structure,
    losses, assigners and their weights stay those of the real config.
    """
    model = load_config(path).model
    model.num_classes = num_classes
    model.backbone = dict(
        type='ResNet',
        depth=18,
        base_channels=16,
        num_stages=4,
        out_indices=(1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=False),
        norm_eval=True,
        style='pytorch',
        init_cfg=None)
    model.neck.in_channels = [32, 64, 128]
    head = model.query_head
    head.num_query = num_query
    head.transformer.encoder.num_layers = enc_layers
    head.transformer.decoder.num_layers = dec_layers
    head.transformer.encoder.layer_cfg.ffn_cfg.feedforward_channels = 64
    head.transformer.decoder.layer_cfg.ffn_cfg.feedforward_channels = 64
    if model.get('rpn_head'):
        model.rpn_head.proposal_cfg.update(nms_pre=300, max_per_img=100)
        model.rpn_head.test_cfg.update(nms_pre=300, max_per_img=100)
    for roi_head in (model.get('roi_head') or {}).values():
        if roi_head is None:
            continue
        roi_head.bbox_head.fc_out_channels = 32
        roi_head.train_cfg.sampler.num = 64
    return model


def build_model(model_cfg: ConfigDict, seed: int = 0) -> torch.nn.Module:
    """Register the plugin, build and initialise the model (eval mode)."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    import projects.codetr  # noqa: F401  (registers the modules)
    register_all_modules()
    torch.manual_seed(seed)
    model = MODELS.build(model_cfg)
    model.init_weights()
    return model.eval()


def make_batch(model: torch.nn.Module,
               image_sizes: Sequence[Tuple[int,
                                           int]] = ((96, 128), (128, 112)),
               num_boxes: Sequence[int] = (3, 2),
               num_classes: int = 3,
               seed: int = 0,
               boxes: Optional[Sequence[torch.Tensor]] = None,
               training: bool = True) -> Tuple[torch.Tensor, list]:
    """Random images and boxes, padded by the model's data preprocessor.

    Args:
        image_sizes: (h, w) per image; images differ so padding masks matter.
        num_boxes: Ground-truth boxes per image (0 gives an empty image).
        boxes: Explicit (n, 4) absolute (x1, y1, x2, y2) boxes per image;
            overrides ``num_boxes``.

    Returns:
        tuple: Batch tensor (bs, 3, H, W) and the data samples.
    """
    gen = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for i, (h, w) in enumerate(image_sizes):
        inputs.append(
            torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8))
        if boxes is not None:
            bboxes = torch.as_tensor(boxes[i], dtype=torch.float32)
        else:
            n = num_boxes[i]
            xy = torch.rand(n, 2, generator=gen) * torch.tensor([w, h]) * 0.6
            wh = (torch.rand(n, 2, generator=gen) * 0.3 + 0.1) * torch.tensor(
                [w, h])
            bboxes = torch.cat([xy, xy + wh], dim=1)
        sample = DetDataSample(
            metainfo=dict(
                img_id=i,
                img_shape=(h, w),
                ori_shape=(h, w),
                scale_factor=(1.0, 1.0)))
        sample.gt_instances = InstanceData(
            bboxes=bboxes,
            labels=torch.randint(
                0, num_classes, (len(bboxes), ), generator=gen))
        samples.append(sample)
    data = model.data_preprocessor(
        dict(inputs=inputs, data_samples=samples), training=training)
    return data['inputs'], data['data_samples']


def profiled_training_step(model: torch.nn.Module, inputs: torch.Tensor,
                           samples: Sequence[DetDataSample]):
    """A training step (loss, backward, a zero-lr SGD step) for
    ``projects.codetr.analysis.step_profile.profile_step``, with the
    backward and optimizer labelled as the benchmark labels them; a list
    ``calls`` on the returned function counts its calls."""
    from torch.profiler import record_function
    optim = torch.optim.SGD(model.parameters(), lr=0.0)

    def step():
        loss, _ = model.parse_losses(model.loss(inputs, samples))
        with record_function('backward'):
            loss.backward()
        with record_function('optimizer'):
            optim.step()
            optim.zero_grad()
        step.calls.append(1)

    step.calls = []
    return step
