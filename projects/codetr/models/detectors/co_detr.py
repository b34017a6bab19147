"""The Co-DETR detector: one query head trained together with one-to-many
auxiliary heads on the encoder output."""
import copy
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from mmdet.models.detectors import BaseDetector
from mmdet.models.utils import unpack_gt_instances
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from mmdet.utils import ConfigType, OptConfigType, OptMultiConfig
from mmengine.model import ModuleList
from mmengine.utils import is_list_of
from torch import Tensor, nn
from torch.nn.modules.dropout import _DropoutNd

from ..precision.dtypes import at_least_float32
from .cuda_graphs import CudaGraphCache
from .head_config import (HeadCfgs, distribute_released_cfgs, heads_as_list,
                          inject_num_co_heads, resolve_num_classes)

EVAL_MODULES = ('detr', 'one-stage', 'two-stage')


def draws_random_numbers(module: nn.Module) -> bool:
    """Whether ``module`` draws random numbers in training mode: a dropout
    with p > 0 or a drop path (mmcv's ``DropPath``) with ``drop_prob`` > 0
    among its submodules."""
    return any(
        (isinstance(m, _DropoutNd) and m.p > 0)
        or getattr(m, 'drop_prob', 0) > 0 for m in module.modules())


def add_loss_suffix(losses: Dict[str, Tensor],
                    suffix: int) -> Dict[str, Tensor]:
    """``{'loss_cls': v}`` -> ``{'loss_cls{suffix}': v}`` for every key."""
    return {f'{key}{suffix}': value for key, value in losses.items()}


@MODELS.register_module()
class CoDETR(BaseDetector):
    """Co-DETR: DETRs with collaborative hybrid assignments training.

    Training (docs/design.md, data flow): backbone and neck feed the query
    head's
    encoder; the encoder memory, rebuilt as a 5-level pyramid, feeds the
    auxiliary heads (RPN + RoI heads, dense heads such as ATSS), whose
    one-to-many assignments become customised positive queries decoded by
    the shared decoder. Inference runs the query head only (``eval_module``
    selects an auxiliary head instead, running the encoder only).

    Args:
        backbone (dict): Backbone config.
        neck (dict, optional): Neck config.
        query_head (dict): ``CoDeformDETRHead`` config.
        rpn_head (dict, optional): RPN config; its ``proposal_cfg`` sets the
            training proposals handed to the RoI heads.
        roi_head, bbox_head: RoI / dense auxiliary heads: a head dict, a
            list, or a dict of named heads (``None`` disables one).
        num_classes (int, optional): Classes of every head, set once here.
        with_pos_coord (bool): Decode the auxiliary heads' positives as
            customised positive queries. False keeps the auxiliary heads for
            encoder supervision only. Defaults to True.
        eval_module (str): ``'detr'``, ``'one-stage'`` (a dense auxiliary
            head) or ``'two-stage'`` (RPN + a RoI head). Defaults to 'detr'.
        eval_index (int): Which auxiliary head ``eval_module`` uses.
        dense_heads_first (bool): Run the dense auxiliary heads before the
            RPN and RoI heads in training (:meth:`aux_heads_loss`); the
            released code runs them after. The same losses where the dense
            heads draw no random numbers (ATSS, FCOS). Defaults to True.
        cuda_graphs (int): Replay the ``'detr'`` inference on CUDA from CUDA
            graphs, one per input signature, for at most this many
            signatures (later ones run eagerly); 0 (default) never. Pays
            where input sizes repeat (see ``cuda_graphs.py``).
        train_cfg, test_cfg (list, optional): Released list layout; omit
            when each head carries its own ``train_cfg``/``test_cfg``.
        data_preprocessor (dict, optional): ``DetDataPreprocessor`` config.
        init_cfg (dict, optional): Initialisation config.
    """

    def __init__(self,
                 backbone: ConfigType,
                 neck: OptConfigType = None,
                 query_head: OptConfigType = None,
                 rpn_head: OptConfigType = None,
                 roi_head: HeadCfgs = None,
                 bbox_head: HeadCfgs = None,
                 num_classes: Optional[int] = None,
                 with_pos_coord: bool = True,
                 eval_module: str = 'detr',
                 eval_index: int = 0,
                 dense_heads_first: bool = True,
                 cuda_graphs: int = 0,
                 train_cfg: Optional[list] = None,
                 test_cfg: Optional[list] = None,
                 data_preprocessor: OptConfigType = None,
                 init_cfg: OptMultiConfig = None) -> None:
        super().__init__(
            data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if query_head is None:
            raise ValueError('CoDETR needs a query_head')
        query_head = copy.deepcopy(dict(query_head))
        rpn_head = copy.deepcopy(dict(rpn_head)) if rpn_head else None
        roi_heads = heads_as_list(roi_head, 'roi_head')
        bbox_heads = heads_as_list(bbox_head, 'bbox_head')
        if roi_heads and rpn_head is None:
            raise ValueError('roi_head needs an rpn_head for its proposals')
        if rpn_head is not None and not roi_heads:
            raise ValueError('rpn_head is set but there is no roi_head: the '
                             'RPN only feeds the RoI heads. Set '
                             'model.rpn_head=None as well.')
        distribute_released_cfgs(train_cfg, test_cfg, query_head, rpn_head,
                                 roi_heads, bbox_heads)
        self.num_classes = resolve_num_classes(num_classes, query_head,
                                               roi_heads, bbox_heads)
        self.with_pos_coord = with_pos_coord
        num_co_heads = len(roi_heads) + len(bbox_heads) if with_pos_coord \
            else 0
        inject_num_co_heads(query_head, num_co_heads)

        self.backbone = MODELS.build(backbone)
        if neck is not None:
            self.neck = MODELS.build(neck)
        # Queries made from the ground truth alone (Co-DINO's denoising)
        # are made before the backbone runs unless the backbone or neck draw
        # random numbers in training (Swin's drop path): then they come
        # after it, so that the draws keep their order.
        self._early_queries = not draws_random_numbers(self.backbone) and \
            not (neck is not None and draws_random_numbers(self.neck))
        # K = 0: nothing reads the auxiliary pyramid, so the query head
        # builds no stride-2 downsample (it would be a parameter without
        # gradient, an error under DDP without find_unused_parameters).
        query_head['with_aux_pyramid'] = bool(roi_heads or bbox_heads)
        self.query_head = MODELS.build(query_head)
        self.rpn_proposal_cfg = None
        if rpn_head is not None:
            self.rpn_proposal_cfg = rpn_head.pop('proposal_cfg', None) or \
                rpn_head.get('test_cfg')
            self.rpn_head = MODELS.build(rpn_head)
        # mmengine's ModuleList forwards init_weights() to the heads (a
        # torch ModuleList would leave them at PyTorch's default init).
        self.roi_head = ModuleList(MODELS.build(cfg) for cfg in roi_heads)
        self.bbox_head = ModuleList(MODELS.build(cfg) for cfg in bbox_heads)

        self._check_eval_module(eval_module, eval_index)
        self.eval_module = eval_module
        self.eval_index = eval_index
        self.dense_heads_first = dense_heads_first
        self.cuda_graphs = CudaGraphCache(cuda_graphs) if cuda_graphs \
            else None

    def _check_eval_module(self, eval_module: str, eval_index: int) -> None:
        if eval_module not in EVAL_MODULES:
            raise ValueError(f'eval_module must be one of {EVAL_MODULES}, '
                             f'got {eval_module!r}')
        heads = {'one-stage': self.bbox_head, 'two-stage': self.roi_head}
        if eval_module in heads and not \
                0 <= eval_index < len(heads[eval_module]):
            kind = 'bbox_head' if eval_module == 'one-stage' else 'roi_head'
            raise ValueError(
                f"eval_module={eval_module!r} evaluates {kind}[{eval_index}]"
                f' but the model has {len(heads[eval_module])} {kind}(s)')

    @property
    def with_rpn(self) -> bool:
        return getattr(self, 'rpn_head', None) is not None

    def extract_feat(self, batch_inputs: Tensor) -> Tuple[Tensor, ...]:
        """Backbone and neck: (bs, 3, H, W) -> maps (bs, dim, h_l, w_l)."""
        x = self.backbone(batch_inputs)
        if self.with_neck:
            x = self.neck(x)
        return tuple(x)

    def loss(self, batch_inputs: Tensor,
             batch_data_samples: SampleList) -> Dict[str, Tensor]:
        """All training losses (docs/design.md, data flow).

        Args:
            batch_inputs (Tensor): Padded images, (bs, 3, H, W).
            batch_data_samples (list[DetDataSample]): ``gt_instances`` with
                absolute (x1, y1, x2, y2) boxes, and image metas.

        Returns:
            dict[str, Tensor]: Main, encoder, auxiliary-head and
            auxiliary-query losses; every key to be summed contains 'loss'.
        """
        # queries of the ground truth alone (Co-DINO's denoising) first:
        # their reads of the device then wait for no queued work
        queries = self.query_head.ground_truth_queries(
            batch_data_samples) if self._early_queries else {}
        x = self.extract_feat(batch_inputs)
        plan = self.query_head.prepare_decoding(x, batch_data_samples,
                                                **queries)
        aux_losses, pos_coords = dict(), []
        if self.roi_head or self.bbox_head:  # none: K = 0
            pyramid = self.query_head.memory_to_pyramid(plan['memory'], x)
            aux_losses, pos_coords = self.aux_heads_loss(
                pyramid, batch_data_samples)
        # the auxiliary heads run first: their positives are decoded in the
        # main queries' decoder pass (query_head.joint_decoding)
        losses, pos_query_losses = self.query_head.loss_with_aux(
            plan, pos_coords, batch_data_samples)
        losses.update(aux_losses)
        losses.update(pos_query_losses)
        return losses

    def parse_losses(self, losses: Dict[str, Union[Tensor, List[Tensor]]]
                     ) -> Tuple[Tensor, Dict[str, Tensor]]:
        """mmengine's ``parse_losses`` with one sum for the total.

        The same total (every entry whose key contains 'loss', lists summed)
        and log variables as mmengine's, but the ~65 loss terms of a K=2
        step are added by one ``stack().sum()`` instead of a chain of ~65
        additions, and scalar terms skip the ``mean()`` that leaves them
        unchanged: about 200 fewer kernel launches, forward and backward,
        per training step on a GPU. Each term's gradient is still exactly
        the total's (a sum), so every parameter gradient is unchanged; the
        total itself may differ from mmengine's in its last bits (another
        order of the additions).

        Args:
            losses (dict[str, Tensor | list[Tensor]]): :meth:`loss`'s
                output.

        Returns:
            tuple[Tensor, dict[str, Tensor]]: The total loss (a 0-d tensor,
            or 0 without loss keys, as mmengine), and ``loss`` followed by
            every entry's mean, in ``losses``' order, for the logger.
        """
        log_vars = []
        for name, value in losses.items():
            if isinstance(value, Tensor):
                log_vars.append(
                    (name, value if value.dim() == 0 else value.mean()))
            elif is_list_of(value, Tensor):
                log_vars.append((name, sum(part.mean() for part in value)))
            else:
                raise TypeError(f'{name} is not a tensor or list of tensors')
        # an empty list sums to the int 0, which adds nothing
        terms = [
            value for name, value in log_vars
            if 'loss' in name and isinstance(value, Tensor)
        ]
        total = 0
        if terms:
            # a 0-d CPU term (which an addition would accept) joins the
            # others' device, as in mmengine's sum; mixed dtypes are
            # promoted as by an addition
            device = next((t.device for t in terms if t.device.type != 'cpu'),
                          terms[0].device)
            total = torch.stack([term.to(device) for term in terms]).sum()
        return total, OrderedDict([('loss', total)] + log_vars)

    def aux_heads_loss(self, pyramid: Tuple[Tensor, ...],
                       batch_data_samples: SampleList) -> Tuple[Dict, List]:
        """Losses and positive coordinates of every auxiliary head.

        RoI heads are numbered 0.. and dense heads continue the count; the
        number suffixes their loss keys (RPN keys stay unsuffixed), and
        losses and positive sets come in that order.

        With ``dense_heads_first`` the dense heads run before the RPN. On a
        GPU the RPN reads the device early (its loss, its NMS), and that
        first read waits until the GPU has finished the backbone and the
        encoder; ``CoATSSHead`` as the zoo configures it reads nothing back
        and copies nothing from the host, so issued first its whole
        computation is queued during that wait instead of after it
        (docs/performance.md). The heads are independent and ATSS and FCOS
        draw no random numbers, so the values are the same.

        Returns:
            tuple[dict, list[PositiveCoords]]: Losses, and one positive-
            coordinate set per head when ``with_pos_coord``.
        """
        def dense_heads() -> List[Tuple[Dict, object]]:
            return [
                head.loss_and_pos_coords(pyramid, batch_data_samples)
                for head in self.bbox_head
            ]

        dense = dense_heads() if self.dense_heads_first else None
        losses, pos_coords = dict(), []
        if self.roi_head:
            rpn_losses, proposals = self.rpn_loss_and_proposals(
                pyramid, batch_data_samples)
            losses.update(rpn_losses)
            for i, roi_head in enumerate(self.roi_head):
                head_losses, coords = roi_head.loss_and_pos_coords(
                    pyramid, proposals, batch_data_samples)
                losses.update(add_loss_suffix(head_losses, i))
                pos_coords.append(coords)
        if dense is None:
            dense = dense_heads()
        for j, (head_losses, coords) in enumerate(dense):
            losses.update(add_loss_suffix(head_losses, len(self.roi_head) + j))
            pos_coords.append(coords)
        if not self.with_pos_coord:
            pos_coords = []
        return losses, pos_coords

    def rpn_loss_and_proposals(self, pyramid: Tuple[Tensor, ...],
                               batch_data_samples: SampleList) -> tuple:
        """Class-agnostic RPN losses and the training proposals.

        mmdet's ``loss_and_predict``, except that proposals are decoded from
        fp32 scores (float64 in a float64 model): under fp16 autocast,
        mmcv's ``batched_nms`` (taken for more than 10000 boxes, i.e.
        ``nms_pre=4000`` over 5 levels) writes fp32 NMS scores into an fp16
        buffer and raises.

        Returns:
            tuple[dict, list[InstanceData]]: ``loss_rpn_cls``,
            ``loss_rpn_bbox``; proposals per image (``bboxes`` absolute
            (x1, y1, x2, y2), ``scores``).
        """
        rpn_samples = copy.deepcopy(batch_data_samples)
        for sample in rpn_samples:  # the RPN is class-agnostic
            sample.gt_instances.labels = torch.zeros_like(
                sample.gt_instances.labels)
        gt_instances, gt_ignore, img_metas = unpack_gt_instances(rpn_samples)
        cls_scores, bbox_preds = self.rpn_head(pyramid)
        losses = self.rpn_head.loss_by_feat(cls_scores, bbox_preds,
                                            gt_instances, img_metas, gt_ignore)
        proposals = self.rpn_head.predict_by_feat(
            [at_least_float32(s) for s in cls_scores],
            [at_least_float32(b) for b in bbox_preds],
            batch_img_metas=img_metas,
            cfg=self.rpn_proposal_cfg)
        return losses, proposals

    def predict(self,
                batch_inputs: Tensor,
                batch_data_samples: SampleList,
                rescale: bool = True) -> SampleList:
        """Detections of ``eval_module`` (docs/design.md, inference).

        Returns:
            list[DetDataSample]: With ``pred_instances`` (``bboxes`` absolute
            (x1, y1, x2, y2), ``scores``, ``labels``), at most the head's
            ``max_per_img`` per image.
        """
        if self.eval_module == 'detr':
            results = self.query_head.predict_by_feat(
                *self._detr_predictions(batch_inputs, batch_data_samples),
                [s.metainfo for s in batch_data_samples],
                rescale=rescale)
        else:
            x = self.extract_feat(batch_inputs)
            # Auxiliary heads only need the encoder.
            enc = self.query_head.encode(x, batch_data_samples)
            pyramid = self.query_head.memory_to_pyramid(enc['memory'], x)
            if self.eval_module == 'one-stage':
                results = self.bbox_head[self.eval_index].predict(
                    pyramid, batch_data_samples, rescale=rescale)
            else:
                proposals = self.rpn_head.predict(
                    pyramid, batch_data_samples, rescale=False)
                results = self.roi_head[self.eval_index].predict(
                    pyramid, proposals, batch_data_samples, rescale=rescale)
        return self.add_pred_to_datasample(batch_data_samples, results)

    def detr_predictions(self, batch_inputs: Tensor,
                         batch_data_samples: SampleList
                         ) -> Tuple[Tensor, Tensor]:
        """The query head's last-layer logits (1, bs, num_query,
        num_classes) and boxes (1, bs, num_query, 4), normalised
        (cx, cy, w, h): the tensor part of the ``'detr'`` inference."""
        x = self.extract_feat(batch_inputs)
        outs = self.query_head.forward_transformer(x, batch_data_samples)
        return self.query_head.last_layer_predictions(outs)

    def _detr_predictions(self, batch_inputs: Tensor,
                          batch_data_samples: SampleList
                          ) -> Tuple[Tensor, Tensor]:
        """:meth:`detr_predictions`, from a CUDA graph when enabled."""
        # graphs in eval mode only: in training mode Co-DINO's forward adds
        # denoising queries built from each batch's boxes
        if self.cuda_graphs is None or self.training or \
                not batch_inputs.is_cuda or torch.is_grad_enabled() or \
                torch.jit.is_tracing():
            return self.detr_predictions(batch_inputs, batch_data_samples)
        # what the forward reads from the samples: the padding masks' shapes
        key = (tuple(batch_data_samples[0].batch_input_shape),
               tuple(tuple(s.img_shape) for s in batch_data_samples))
        return self.cuda_graphs(
            lambda x: self.detr_predictions(x, batch_data_samples), key,
            batch_inputs)

    def _apply(self, fn: Callable, *args, **kwargs) -> 'CoDETR':
        """``nn.Module._apply`` (behind ``.to()``, ``.cuda()``,
        ``.half()``), forgetting the CUDA graphs: they point at the tensors
        being replaced."""
        if getattr(self, 'cuda_graphs', None) is not None:
            self.cuda_graphs.clear()
        return super()._apply(fn, *args, **kwargs)

    def _forward(self,
                 batch_inputs: Tensor,
                 batch_data_samples: SampleList = None) -> Tuple[Tensor, ...]:
        """Raw query-head outputs (tensor mode).

        Returns:
            tuple[Tensor, Tensor]: Class logits (num_layers, bs, num_query,
            num_classes) and boxes (num_layers, bs, num_query, 4), normalised
            (cx, cy, w, h).
        """
        x = self.extract_feat(batch_inputs)
        outs = self.query_head.forward_transformer(x, batch_data_samples)
        return self.query_head(outs['hidden_states'], outs['references'])
