"""mmdet 3.3's own Co-DETR (``projects/CO-DETR`` of an mmdetection source
checkout) as benchmark arms, timed in a process of its own.

``projects/`` is not in the mmdet wheel, so ``--mmdet-source DIR`` names a
checkout (``DIR/projects/CO-DETR``; v3.3.0 is commit 44ebd17 of mmdet's
history). Its modules register ``CoDETR``, ``CoDINOHead``, ... in mmdet's
registries under the names this plugin registers, so the two cannot be
imported into one process. The source arms run in a child process that
loads this analysis package under a private name (it imports nothing of
the plugin) together with mmdet's two-stage Deformable DETR, the reference
arm that both processes time: a ratio between the processes is taken
through it (:func:`cross_ratio`).
"""
import argparse
import json
import os.path as osp
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional

ANALYSIS_DIR = osp.dirname(osp.abspath(__file__))
REFERENCE = 'mmdet-ddetr'
SOURCE_MODELS = {
    'mmdet-codino':
    'projects/CO-DETR/configs/codino/co_dino_5scale_r50_8xb2_1x_coco.py',
}
# The child imports this package as ``codetr_analysis``: loading it as
# ``projects.codetr.analysis`` would run ``projects/codetr/__init__.py``,
# which registers the plugin's modules.
BOOTSTRAP = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location(
    'codetr_analysis', {init!r}, submodule_search_locations=[{path!r}])
module = importlib.util.module_from_spec(spec)
sys.modules['codetr_analysis'] = module
spec.loader.exec_module(module)
from codetr_analysis.mmdet_source import child_main
child_main(sys.argv[1])
"""


def is_source_model(name: str) -> bool:
    """Whether ``name`` (``NAME[@overrides]``) is an arm of the source."""
    return name.partition('@')[0] in SOURCE_MODELS


def source_config(name: str, mmdet_source: Optional[str]) -> str:
    """The config file of a source model inside ``mmdet_source``."""
    if not mmdet_source:
        raise ValueError(f'{name} needs --mmdet-source: an mmdetection '
                         'source checkout holding projects/CO-DETR')
    path = osp.join(mmdet_source, SOURCE_MODELS[name])
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} not found: --mmdet-source must be '
                                'an mmdetection checkout of v3.3.0')
    return path


def child_main(encoded_args: str) -> None:
    """Entry of the child process: the benchmark of the source arms.

    Args:
        encoded_args (str): The parent's arguments as a JSON object.
    """
    args = argparse.Namespace(**json.loads(encoded_args))
    # ``projects.CO-DETR.codetr`` (the config's custom_imports) from the
    # checkout; the plugin's ``projects`` has no ``__init__.py`` either, so
    # the two folders share the namespace package ``projects``.
    sys.path.insert(0, osp.abspath(args.mmdet_source))
    from .benchmark import run
    run(args)


def run_source_arms(args: argparse.Namespace,
                    names: List[str]) -> List[Dict]:
    """Time ``names`` and :data:`REFERENCE` in a child process.

    The child prints its own table and profiles (its output goes to this
    process's stdout).

    Args:
        args (argparse.Namespace): The benchmark's arguments.
        names (list[str]): Source models, e.g. ``['mmdet-codino']``.

    Returns:
        list[dict]: The child's rows, each with ``process='mmdet-source'``.
    """
    with tempfile.TemporaryDirectory() as tmp:
        child = dict(vars(args))
        child.update(
            models=[REFERENCE] + [n for n in names if n != REFERENCE],
            out=osp.join(tmp, 'rows.json'),
            source_process=True,
            profile=[n for n in args.profile if is_source_model(n)])
        code = BOOTSTRAP.format(
            init=osp.join(ANALYSIS_DIR, '__init__.py'), path=ANALYSIS_DIR)
        print(f'--- source arms in a child process: {child["models"]}',
              flush=True)
        proc = subprocess.run([sys.executable, '-c', code, json.dumps(child)])
        if proc.returncode != 0 or not osp.exists(child['out']):
            print(f'the child process failed (exit {proc.returncode}): no '
                  'source rows', flush=True)
            return []
        with open(child['out']) as f:
            rows = json.load(f)
    for row in rows:
        row['process'] = 'mmdet-source'
    print('--- end of the child process', flush=True)
    return rows


def cross_ratio(rows: List[Dict], ours: str, theirs: str,
                precision: str = 'fp32') -> Optional[float]:
    """Step time of ``ours`` over ``theirs`` (``precision`` arms) through
    the reference arm both processes timed: (ours / reference in ours'
    process) / (theirs / reference in theirs'), which cancels a drift of
    the host between the processes. None when an arm is missing."""

    def step(model, process, prec=precision):
        return next((r['step_ms'] for r in rows
                     if r['model'] == model and r['precision'] == prec
                     and r.get('process', 'main') == process), None)

    ours_row = next((r for r in rows if r['model'] == ours), None)
    theirs_row = next((r for r in rows if r['model'] == theirs), None)
    if ours_row is None or theirs_row is None:
        return None
    p_ours = ours_row.get('process', 'main')
    p_theirs = theirs_row.get('process', 'main')
    values = [step(ours, p_ours), step(REFERENCE, p_ours, 'fp32'),
              step(theirs, p_theirs), step(REFERENCE, p_theirs, 'fp32')]
    if None in values:
        return None
    return (values[0] / values[1]) / (values[2] / values[3])
