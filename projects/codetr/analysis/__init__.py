"""Measurements of Co-DETR: speed, host reads, training curves, convergence.

The library behind the command lines in ``tools/analysis/``. It is opt-in:
``projects.codetr`` does not import it and it registers nothing, so
importing the plugin stays as light as without it. One idea per module:

- ``synthetic``: generated images and boxes, preprocessed like a batch;
- ``bench_arms``: models built side by side and timed in alternation;
- ``step_profile``: where the time of a training step goes;
- ``host_syncs``: where a training step reads tensors back to the host;
- ``model_summary``: parameters per module and training-step time;
- ``train_throughput``: the iteration time ``tools/train.py`` logs;
- ``conv_shape_cost``: what a new input size costs the convolutions;
- ``curves``: reading mmengine's scalar logs and plotting them;
- ``convergence_arms``, ``convergence``, ``convergence_report``: the
  convergence benchmark's arms, its driver and its summary.

Heavy optional dependencies (matplotlib, the profiler) are imported inside
the functions that need them.
"""
import os.path as osp

# The tools resolve configs and ``tools/*.py`` against the checkout the
# plugin is installed from (an editable install, see README.md).
REPO_ROOT = osp.dirname(
    osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
