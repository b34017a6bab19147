"""Golden outputs of the official DAB-Deformable-DETR code, run on CPU.

    python tests/data/parity/dab/make_golden.py \\
        --official /tmp/dab_official --out tests/data/parity/dab

``--official`` is an extracted checkout of IDEA-Research/DAB-DETR
(``git archive``). The script copies it to a temporary folder, applies the
exact textual replacements of ``EDITS`` (and ``F64_EDITS``) to that copy,
imports the official code from it with the stand-ins of ``install_stubs``
(no torchvision, no CUDA extension), builds the model through the official
builder with ``main.py``'s parser, fills every floating tensor with
``fill.py`` and stores what the official model, criterion and
``PostProcess`` compute. Each configuration runs in its own process; the
float32 and float64 files come with the checks listed in ``checks``
(README.md says what they are).
"""
import argparse
import ast
import hashlib
import importlib
import json
import math
import os
import platform
import runpy
import shutil
import subprocess
import sys
import tempfile
import types
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
PARITY_DIR = HERE.parent
SALT = '#D'
TAGS = (('one', 1), ('two', 2))

# main.py's parser: the published DAB-Deformable-DETR command
# (`-m dab_deformable_detr --transformer_activation relu`), ResNet-18, 2+2
# layers, CPU; everything else the parser's defaults.
ARGV = [
    '-m', 'dab_deformable_detr', '--transformer_activation', 'relu',
    '--backbone', 'resnet18', '--enc_layers', '2', '--dec_layers', '2',
    '--device', 'cpu', '--coco_path', 'unused'
]

DAB = 'models/dab_deformable_detr/'
# Applied for every run: ResNet-18 channels (the official Backbone asserts
# that the backbone is not ResNet-18/34 because its channels are hard
# coded for ResNet-50) and 80 classes (the builder hard-codes 91 for COCO).
EDITS = [
    (DAB + 'backbone.py',
     'assert name not in (\'resnet18\', \'resnet34\'), '
     '"number of channels are hard coded"\n'
     '        super().__init__(backbone, train_backbone, '
     'return_interm_layers)',
     'super().__init__(backbone, train_backbone, return_interm_layers)\n'
     '        if name in (\'resnet18\', \'resnet34\'):\n'
     '            self.num_channels = [128, 256, 512]'),
    (DAB + 'dab_deformable_detr.py',
     'num_classes = 20 if args.dataset_file != \'coco\' else 91',
     'num_classes = 80'),
]
# Hard-coded float32 on the path this model takes, made to follow the
# default dtype (float32 results stay bit-identical: checked by main()).
F64_EDITS = [
    (DAB + 'position_encoding.py',
     'y_embed = not_mask.cumsum(1, dtype=torch.float32)',
     'y_embed = not_mask.cumsum(1, dtype=torch.get_default_dtype())'),
    (DAB + 'position_encoding.py',
     'x_embed = not_mask.cumsum(2, dtype=torch.float32)',
     'x_embed = not_mask.cumsum(2, dtype=torch.get_default_dtype())'),
    (DAB + 'position_encoding.py',
     'dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, '
     'device=x.device)',
     'dim_t = torch.arange(self.num_pos_feats, '
     'dtype=torch.get_default_dtype(), device=x.device)'),
    (DAB + 'deformable_transformer.py',
     'dim_t = torch.arange(128, dtype=torch.float32, '
     'device=pos_tensor.device)',
     'dim_t = torch.arange(128, dtype=torch.get_default_dtype(), '
     'device=pos_tensor.device)'),
    (DAB + 'deformable_transformer.py',
     'valid_ratio_h = valid_H.float() / H',
     'valid_ratio_h = valid_H.to(torch.get_default_dtype()) / H'),
    (DAB + 'deformable_transformer.py',
     'valid_ratio_w = valid_W.float() / W',
     'valid_ratio_w = valid_W.to(torch.get_default_dtype()) / W'),
    (DAB + 'deformable_transformer.py',
     'torch.linspace(0.5, H_ - 0.5, H_, dtype=torch.float32, '
     'device=device)',
     'torch.linspace(0.5, H_ - 0.5, H_, dtype=torch.get_default_dtype(), '
     'device=device)'),
    (DAB + 'deformable_transformer.py',
     'torch.linspace(0.5, W_ - 0.5, W_, dtype=torch.float32, '
     'device=device)',
     'torch.linspace(0.5, W_ - 0.5, W_, dtype=torch.get_default_dtype(), '
     'device=device)'),
]
# Model errors for --sensitivity: each one applied on top of EDITS and
# F64_EDITS, run in float64, compared with the unchanged run.
_TR = DAB + 'deformable_transformer.py'
_PE = DAB + 'position_encoding.py'
_SINE = 'pos = torch.cat((pos_y, pos_x, pos_w, pos_h), dim=2)'
_VALID = 'torch.cat([src_valid_ratios, src_valid_ratios], -1)[:, None]'
MUTATIONS = {
    'sine embedding x/y swapped':
    [(_TR, _SINE, _SINE.replace('pos_y, pos_x', 'pos_x, pos_y'))],
    'sine embedding w/h swapped':
    [(_TR, _SINE, _SINE.replace('pos_w, pos_h', 'pos_h, pos_w'))],
    'query_scale on the first decoder layer too':
    [(_TR, 'pos_scale = self.query_scale(output) if lid != 0 else 1',
      'pos_scale = self.query_scale(output)')],
    'box-reference offsets not divided by n_points':
    [(DAB + 'ops/modules/ms_deform_attn.py',
      'sampling_offsets / self.n_points * reference_points',
      'sampling_offsets * reference_points')],
    'decoder references not scaled by valid ratios':
    [(_TR, '* ' + _VALID, '* torch.ones_like(' + _VALID + ')')],
    'sine embedding of the unscaled references':
    [(_TR, 'gen_sineembed_for_position(reference_points_input[:, :, 0, :])',
      'gen_sineembed_for_position(reference_points)')],
    'encoder references not scaled by valid ratios':
    [(_TR, 'reference_points = reference_points[:, :, None] * '
      'valid_ratios[:, None]',
      'reference_points = reference_points[:, :, None].repeat('
      '1, 1, valid_ratios.shape[1], 1)')],
    'positional encoding without the -0.5 offset':
    [(_PE, f'{a}_embed = ({a}_embed - 0.5) /', f'{a}_embed = {a}_embed /')
     for a in 'yx'],
    'positional encoding eps 1e-12 (1e-6)':
    [(_PE, 'eps = 1e-6', 'eps = 1e-12')],
    'GIoU without its +1e-6 (loss and matcher)':
    [('util/box_ops.py', 'iou = inter / (union + 1e-6)',
      'iou = inter / union'),
     ('util/box_ops.py', 'return iou - (area - union) / (area + 1e-6)',
      'return iou - (area - union) / area')],
    'FrozenBatchNorm2d eps 0 (1e-5)':
    [(DAB + 'backbone.py', 'def __init__(self, n, eps=1e-5):',
      'def __init__(self, n, eps=0.0):')],
    'inverse_sigmoid eps 1e-5 (1e-3)':
    [('util/misc.py', 'def inverse_sigmoid(x, eps=1e-3):',
      'def inverse_sigmoid(x, eps=1e-5):')],
    'matcher focal-cost eps 1e-12 (1e-8)':
    [(DAB + 'matcher.py', f'(-({x} + 1e-8).log())', f'(-({x} + 1e-12).log())')
     for x in ('1 - out_prob', 'out_prob')],
    'PostProcess boxes clamped to the image':
    [(DAB + 'dab_deformable_detr.py',
      'boxes = boxes * scale_fct[:, None, :]',
      'boxes = torch.min((boxes * scale_fct[:, None, :]).clamp(min=0), '
      'scale_fct[:, None, :])')],
}
# the official files the model, criterion and post-processing come from
OFFICIAL_FILES = [
    'main.py', 'util/misc.py', 'util/box_ops.py',
    DAB + '__init__.py', DAB + 'backbone.py', DAB + 'dab_deformable_detr.py',
    DAB + 'deformable_transformer.py', DAB + 'matcher.py',
    DAB + 'position_encoding.py', DAB + 'segmentation.py',
    DAB + 'ops/functions/ms_deform_attn_func.py',
    DAB + 'ops/modules/ms_deform_attn.py'
]


# --------------------------------------------------------------------------
# Environment: stand-ins for torchvision and the CUDA extension.
# --------------------------------------------------------------------------
def _box_area(boxes):
    """torchvision.ops.boxes.box_area."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


class _IntermediateLayerGetter(nn.ModuleDict):
    """torchvision.models._utils.IntermediateLayerGetter: the children of
    ``model`` up to the last returned one, run in order."""

    def __init__(self, model, return_layers):
        remaining = dict(return_layers)
        layers = OrderedDict()
        for name, module in model.named_children():
            layers[name] = module
            remaining.pop(name, None)
            if not remaining:
                break
        super().__init__(layers)
        self.return_layers = dict(return_layers)

    def forward(self, x):
        out = OrderedDict()
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


class _BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock (stride on conv1)."""

    def __init__(self, inplanes, planes, stride, norm_layer):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                norm_layer(planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class _ResNet18(nn.Module):
    """torchvision's ResNet-18 module tree (names conv1, bn1, layer1..4,
    fc); only its children are used, through IntermediateLayerGetter."""

    def __init__(self, norm_layer):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = norm_layer(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for i, (planes, stride) in enumerate(
                ((64, 1), (128, 2), (256, 2), (512, 2)), 1):
            blocks = [_BasicBlock(inplanes, planes, stride, norm_layer),
                      _BasicBlock(planes, planes, 1, norm_layer)]
            setattr(self, f'layer{i}', nn.Sequential(*blocks))
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, 1000)


def _resnet18(replace_stride_with_dilation=None, pretrained=False,
              norm_layer=nn.BatchNorm2d):
    """torchvision.models.resnet18; ``pretrained`` is ignored (every
    weight is filled afterwards)."""
    if any(replace_stride_with_dilation or ()):
        raise NotImplementedError('dilation > 1 not supported in BasicBlock')
    return _ResNet18(norm_layer)


def _not_built(*args, **kwargs):
    raise RuntimeError('the CUDA extension is not built; MSDeformAttn is '
                       'routed to ms_deform_attn_core_pytorch')


def install_stubs():
    """A ``torchvision`` with only what the official code touches and an
    unbuilt ``MultiScaleDeformableAttention`` extension."""
    modules = {
        name: types.ModuleType(name)
        for name in ('torchvision', 'torchvision.ops', 'torchvision.ops.boxes',
                     'torchvision.models', 'torchvision.models._utils',
                     'MultiScaleDeformableAttention')
    }
    tv = modules['torchvision']
    tv.__version__ = '0.28.0+stub'  # misc.py: no pre-0.7 compatibility path
    tv._is_tracing = lambda: False  # nested_tensor_from_tensor_list
    tv.ops = modules['torchvision.ops']
    tv.ops.boxes = modules['torchvision.ops.boxes']
    tv.ops.boxes.box_area = _box_area
    tv.models = modules['torchvision.models']
    tv.models._utils = modules['torchvision.models._utils']
    tv.models._utils.IntermediateLayerGetter = _IntermediateLayerGetter
    tv.models.resnet18 = _resnet18
    msda = modules['MultiScaleDeformableAttention']
    msda.ms_deform_attn_forward = msda.ms_deform_attn_backward = _not_built
    sys.modules.update(modules)


def _core_pytorch_function(core):
    """MSDeformAttnFunction routed to the official pure-PyTorch core."""

    class CorePyTorch:

        @staticmethod
        def apply(value, spatial_shapes, level_start_index,
                  sampling_locations, attention_weights, im2col_step):
            return core(value, spatial_shapes, sampling_locations,
                        attention_weights)

    return CorePyTorch


def official_parser(main_py):
    """``get_args_parser`` of the official main.py, compiled alone (main.py
    itself imports the datasets, engine and the DAB-DETR family)."""
    tree = ast.parse(Path(main_py).read_text())
    fn = [node for node in tree.body if isinstance(node, ast.FunctionDef)
          and node.name == 'get_args_parser']
    namespace = {'argparse': argparse}
    exec(compile(ast.Module(body=fn, type_ignores=[]), str(main_py), 'exec'),
         namespace)
    return namespace['get_args_parser']()


def import_official(root):
    """The official modules, imported from the checkout copy ``root``.

    ``models/__init__.py`` is not run (it imports the DAB-DETR family,
    which needs timm): ``models`` is registered as a bare package.
    """
    install_stubs()
    sys.path.insert(0, str(root))
    package = types.ModuleType('models')
    package.__path__ = [str(root / 'models')]
    sys.modules['models'] = package
    dab = importlib.import_module('models.dab_deformable_detr.'
                                  'dab_deformable_detr')
    func = importlib.import_module('models.dab_deformable_detr.ops.'
                                   'functions.ms_deform_attn_func')
    attn = importlib.import_module('models.dab_deformable_detr.ops.'
                                   'modules.ms_deform_attn')
    attn.MSDeformAttnFunction = _core_pytorch_function(
        func.ms_deform_attn_core_pytorch)
    return types.SimpleNamespace(
        dab=dab,
        misc=importlib.import_module('util.misc'),
        box_ops=importlib.import_module('util.box_ops'),
        parser=official_parser(root / 'main.py'))


def prepare_copy(official, dest, edits):
    """Copy the checkout to ``dest`` and apply ``edits`` (each must match
    exactly once)."""
    shutil.copytree(official, dest)
    for path, old, new in edits:
        file = dest / path
        text = file.read_text()
        if text.count(old) != 1:
            raise RuntimeError(f'{path}: {old!r} found {text.count(old)} '
                               'times, expected once')
        file.write_text(text.replace(old, new))
    return dest


# --------------------------------------------------------------------------
# One run of the official code (in a process of its own).
# --------------------------------------------------------------------------
def fill_weights(model, fill):
    """Fill every floating tensor of the state dict by its official name.

    A tensor registered under several names (with box refinement
    ``transformer.decoder.bbox_embed`` is ``bbox_embed``) is filled once,
    by its shortest name; returns (shapes, aliases).
    """
    state = model.state_dict(keep_vars=True)
    groups = OrderedDict()
    for name, tensor in state.items():
        groups.setdefault(id(tensor), []).append(name)
    aliases = {}
    with torch.no_grad():
        for names in groups.values():
            canonical = min(names, key=len)
            aliases.update({n: canonical for n in names if n != canonical})
            tensor = state[canonical]
            if not tensor.is_floating_point():
                raise RuntimeError(f'{canonical}: not a floating tensor')
            tensor.copy_(fill(canonical, tensor.detach().clone(), SALT))
    shapes = {name: list(t.shape) for name, t in state.items()}
    return shapes, aliases


def official_inputs(official, data, num_images, dtype):
    """NestedTensor, targets and sizes as the official COCO pipeline gives
    them: images padded by ``nested_tensor_from_tensor_list`` (mask True on
    padding), boxes (cx, cy, w, h) / (w, h, w, h) of each image's size as in
    ``datasets/transforms.py``'s ``Normalize`` (computed in ``dtype``)."""
    images, targets, sizes = [], [], []
    for i in range(num_images):
        h, w = data['metas'][i]
        images.append(data['img'][i, :, :h, :w].to(dtype))
        boxes = official.box_ops.box_xyxy_to_cxcywh(data['gts'][i].to(dtype))
        boxes = boxes / torch.tensor([w, h, w, h], dtype=dtype)
        targets.append({'labels': data['labels'][i], 'boxes': boxes})
        sizes.append([h, w])
    samples = official.misc.nested_tensor_from_tensor_list(images)
    if not torch.equal(samples.tensors, data['img'][:num_images].to(dtype)):
        raise RuntimeError('padded batch differs from inputs.pt')
    return samples, targets, torch.as_tensor(sizes)


def _flat_outputs(outputs):
    """Every output tensor of the model, last layer first."""
    tensors = [outputs['pred_logits'], outputs['pred_boxes']]
    for aux in outputs.get('aux_outputs', []):
        tensors += [aux['pred_logits'], aux['pred_boxes']]
    return [t.detach() for t in tensors]


def _digest(tensors):
    sha = hashlib.sha256()
    for t in tensors:
        sha.update(t.contiguous().numpy().tobytes())
    return sha.hexdigest()


def detections(results, num_classes):
    """Per image, per label, [x1, y1, x2, y2, score] in output order."""
    out = []
    for res in results:
        per_label = [[] for _ in range(num_classes)]
        for box, score, label in zip(res['boxes'].tolist(),
                                     res['scores'].tolist(),
                                     res['labels'].tolist()):
            per_label[label].append(box + [score])
        out.append(per_label)
    return out


def run_tag(model, criterion, postprocess, samples, targets, sizes):
    model.train()
    criterion.train()
    losses, totals, train_outputs = [], [], None
    for seed in (0, 1):
        torch.manual_seed(seed)
        outputs = model(samples)
        loss_dict = criterion(outputs, targets)
        weight_dict = criterion.weight_dict
        # engine.py train_one_epoch's weighted sum
        total = sum(loss_dict[k] * weight_dict[k] for k in loss_dict.keys()
                    if k in weight_dict)
        losses.append({k: v.item() for k, v in loss_dict.items()})
        totals.append(total.item())
        if train_outputs is None:
            train_outputs = _flat_outputs(outputs)
        del outputs, loss_dict, total
    model.eval()
    criterion.eval()
    with torch.no_grad():
        outputs = model(samples)
        results = postprocess(outputs, sizes)
    eval_outputs = _flat_outputs(outputs)
    return {
        'losses': losses[0],
        'loss_total': totals[0],
        'losses_seed1_equal': losses[0] == losses[1]
        and totals[0] == totals[1],
        'train_eval_outputs_equal': all(
            torch.equal(a, b) for a, b in zip(train_outputs, eval_outputs)),
        'outputs_sha256': _digest(eval_outputs),
        'pred': detections(results, outputs['pred_logits'].shape[-1]),
        'pred_boxes0': outputs['pred_boxes'][0].tolist(),
    }


def worker(spec):
    torch.set_num_threads(spec['threads'])
    dtype = getattr(torch, spec['dtype'])
    official = import_official(Path(spec['copy']))
    args = official.parser.parse_args(ARGV)
    model, criterion, postprocessors = official.dab.build_dab_deformable_detr(
        args)
    fill = runpy.run_path(str(PARITY_DIR / 'fill.py'))['fill']
    shapes, aliases = fill_weights(model, fill)
    if dtype == torch.float64:
        torch.set_default_dtype(torch.float64)
        model.double()
    data = torch.load(PARITY_DIR / 'inputs.pt', weights_only=True)
    out = {
        'argv': ARGV,
        'config': {k: v for k, v in sorted(vars(args).items())},
        'num_classes': model.class_embed[0].out_features,
        'weight_dict': dict(criterion.weight_dict),
        'shapes': shapes,
        'aliases': aliases,
        'frozen': [n for n, p in model.named_parameters()
                   if not p.requires_grad],
    }
    for tag, num_images in TAGS:
        samples, targets, sizes = official_inputs(official, data, num_images,
                                                  dtype)
        out[tag] = run_tag(model, criterion, postprocessors['bbox'], samples,
                           targets, sizes)
    return out


def launch(copy, dtype, threads, tmp):
    """Run ``worker`` in a fresh process with ``threads`` OpenMP/torch
    threads."""
    result = Path(tmp) / f'{Path(copy).name}_{dtype}_{threads}.json'
    spec = dict(copy=str(copy), dtype=dtype, threads=threads,
                result=str(result))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    subprocess.run([sys.executable, __file__, '--worker',
                    json.dumps(spec)], check=True, env=env)
    return json.loads(result.read_text())


# --------------------------------------------------------------------------
# Comparisons and the golden files.
# --------------------------------------------------------------------------
def _max_diff(pairs):
    pairs = list(pairs)
    absolute = max((abs(a - b) for a, b in pairs), default=0.0)
    relative = max((abs(a - b) / abs(a) for a, b in pairs if a != 0),
                   default=0.0)
    return absolute, relative


def compare(a, b):
    """Largest differences between two runs, per tag: losses (absolute,
    relative), detections (px, score; None if the per-label counts
    differ) and the last layer's boxes of image 0."""
    out = {}
    for tag, _ in TAGS:
        ra, rb = a[tag], b[tag]
        keys = sorted(ra['losses'])
        loss = _max_diff((ra['losses'][k], rb['losses'][k]) for k in keys)
        same = all(
            len(la) == len(lb) for pa, pb in zip(ra['pred'], rb['pred'])
            for la, lb in zip(pa, pb))
        box = score = None
        if same:
            dets = [(da, db) for pa, pb in zip(ra['pred'], rb['pred'])
                    for la, lb in zip(pa, pb) for da, db in zip(la, lb)]
            box = _max_diff((x, y) for da, db in dets
                            for x, y in zip(da[:4], db[:4]))[0]
            score = _max_diff((da[4], db[4]) for da, db in dets)[0]
        boxes0 = _max_diff(
            (x, y) for ba, bb in zip(ra['pred_boxes0'], rb['pred_boxes0'])
            for x, y in zip(ba, bb))[0]
        out[tag] = {
            'loss_abs': loss[0], 'loss_rel': loss[1],
            'total_abs': abs(ra['loss_total'] - rb['loss_total']),
            'detections_same_counts': same, 'detection_px': box,
            'detection_score': score, 'pred_boxes0': boxes0,
            'bit_identical': ra['outputs_sha256'] == rb['outputs_sha256']
            and ra['losses'] == rb['losses'] and ra['pred'] == rb['pred']
        }
    return out


def provenance(official):
    files = {
        path: hashlib.sha256((Path(official) / path).read_bytes()).hexdigest()
        for path in OFFICIAL_FILES
    }
    return {'repository': 'IDEA-Research/DAB-DETR', 'sha256': files}


def environment(dtype, threads):
    import numpy
    import scipy
    return {
        'dtype': dtype, 'threads': threads, 'torch': torch.__version__,
        'numpy': numpy.__version__, 'scipy': scipy.__version__,
        'python': platform.python_version(),
        'cpu_capability': torch.backends.cpu.get_cpu_capability()
    }


def golden(run, official, dtype, threads, checks):
    keys = ('argv', 'config', 'num_classes', 'weight_dict', 'frozen', 'shapes',
            'aliases')
    out = {'official': provenance(official),
           'environment': environment(dtype, threads)}
    out.update({k: run[k] for k in keys})
    out['edits'] = [list(e) for e in EDITS]
    out['f64_edits'] = [list(e) for e in F64_EDITS]
    for tag, _ in TAGS:
        out[tag] = {k: v for k, v in run[tag].items()
                    if k != 'outputs_sha256'}
    out['checks'] = checks
    return out


def _summary(name, diffs):
    for tag, d in diffs.items():
        print(f'{name} [{tag}]: ' + ', '.join(
            f'{k}={v:.3g}' if isinstance(v, float) else f'{k}={v}'
            for k, v in d.items()))


def sensitivity(official, tmp):
    """Print how much each model error of MUTATIONS moves the float64
    outputs (largest relative loss change, detections, image 0's boxes)."""
    base = launch(prepare_copy(official, Path(tmp) / 'base',
                               EDITS + F64_EDITS), 'float64', 1, tmp)
    for i, (name, edits) in enumerate(MUTATIONS.items()):
        copy = prepare_copy(official, Path(tmp) / f'mutation{i}',
                            EDITS + F64_EDITS + edits)
        diffs = compare(base, launch(copy, 'float64', 1, tmp))
        print(f'{name}: ' + '; '.join(
            f"{tag} loss rel {d['loss_rel']:.2g}, detections "
            + (f"{d['detection_px']:.2g} px" if d['detections_same_counts']
               else 'other counts')
            + f", boxes0 {d['pred_boxes0']:.2g}"
            for tag, d in diffs.items()), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--official', type=Path)
    parser.add_argument('--out', type=Path, default=HERE)
    parser.add_argument('--sensitivity', action='store_true',
                        help='print how much each of MUTATIONS moves the '
                        'float64 outputs (writes nothing)')
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    cli = parser.parse_args()
    if cli.worker:
        spec = json.loads(cli.worker)
        Path(spec['result']).write_text(json.dumps(worker(spec)))
        return
    official = cli.official.resolve()
    if cli.sensitivity:
        with tempfile.TemporaryDirectory() as tmp:
            sensitivity(official, tmp)
        return
    with tempfile.TemporaryDirectory() as tmp:
        plain = prepare_copy(official, Path(tmp) / 'plain', EDITS)
        edited = prepare_copy(official, Path(tmp) / 'edited',
                              EDITS + F64_EDITS)
        runs = {(c.name, d, t): launch(c, d, t, tmp)
                for c, d, t in [(edited, 'float32', 1),
                                (plain, 'float32', 1),
                                (edited, 'float32', 2),
                                (plain, 'float32', 2),
                                (edited, 'float64', 1),
                                (edited, 'float64', 2),
                                (plain, 'float64', 1)]}
    f32 = runs['edited', 'float32', 1]
    f64 = runs['edited', 'float64', 1]
    checks32 = {
        'float32_identical_without_f64_edits': {
            f'threads_{t}': compare(runs['edited', 'float32', t],
                                    runs['plain', 'float32', t])
            for t in (1, 2)},
        'threads_1_vs_2': compare(f32, runs['edited', 'float32', 2]),
    }
    checks64 = {
        'threads_1_vs_2': compare(f64, runs['edited', 'float64', 2]),
        'without_f64_edits': compare(f64, runs['plain', 'float64', 1]),
        'float32_file_vs_this': compare(f64, f32),
    }
    for run in runs.values():
        for tag, _ in TAGS:
            assert run[tag]['losses_seed1_equal'], tag
    _summary('f32 edited vs plain, 1 thread',
             checks32['float32_identical_without_f64_edits']['threads_1'])
    _summary('f32 edited vs plain, 2 threads',
             checks32['float32_identical_without_f64_edits']['threads_2'])
    _summary('f32 threads 1 vs 2', checks32['threads_1_vs_2'])
    _summary('f64 threads 1 vs 2', checks64['threads_1_vs_2'])
    _summary('f64 without the f64 edits', checks64['without_f64_edits'])
    _summary('f32 vs f64', checks64['float32_file_vs_this'])
    for name, run in (('float32', f32), ('float64', f64)):
        for tag, _ in TAGS:
            print(f'{name} {tag}: total {run[tag]["loss_total"]!r} '
                  f'seeds equal {run[tag]["losses_seed1_equal"]} '
                  f'train==eval {run[tag]["train_eval_outputs_equal"]}')
            for k, v in run[tag]['losses'].items():
                print(f'    {k} {v!r}')
    cli.out.mkdir(parents=True, exist_ok=True)
    for file, run, dtype, checks in (
            ('official_dab.json', f32, 'float32', checks32),
            ('official_dab_f64.json', f64, 'float64', checks64)):
        data = golden(run, official, dtype, 1, checks)
        (cli.out / file).write_text(json.dumps(data) + '\n')
        assert all(math.isfinite(v) for tag, _ in TAGS
                   for v in run[tag]['losses'].values())


if __name__ == '__main__':
    main()
