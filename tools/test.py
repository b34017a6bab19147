"""Test (and evaluate) a detector checkpoint with an MMDetection 3.x config.

Single process::

    python tools/test.py CONFIG CHECKPOINT

Several GPUs / processes (see tools/dist_test.sh)::

    bash tools/dist_test.sh CONFIG CHECKPOINT 8

The COCO metric prints its AP table at the end; progress with ETA is logged
every ``default_hooks.logger.interval`` images (per process).
"""
import argparse
import os
import os.path as osp
import sys

from _plugin import PluginImportError, import_plugin
from mmengine.config import DictAction

EPILOG = """\
examples:
  per-class AP table:
    python tools/test.py CONFIG CKPT --classwise
  detections as a pickle for offline analysis:
    python tools/test.py CONFIG CKPT --out results.pkl
  draw detections (score >= 0.3) into work_dir/<timestamp>/vis:
    python tools/test.py CONFIG CKPT --show-dir vis --score-thr 0.3
  COCO test-dev: write results/test_dev.bbox.json for the evaluation server
  (no ground truth, so no evaluation):
    ANN=annotations/image_info_test-dev2017.json
    python tools/test.py CONFIG CKPT --json-prefix results/test_dev \\
      --format-only --cfg-options test_dataloader.dataset.ann_file=$ANN \\
      test_dataloader.dataset.data_prefix.img=test2017/ \\
      test_evaluator.ann_file=data/coco/$ANN
  (--json-prefix without --format-only writes the JSON and evaluates too)
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) a detector.', epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file (.pth)')
    parser.add_argument(
        '--work-dir',
        help='folder for the log and metrics (default: the config\'s '
        'work_dir, else ./work_dirs/<config name>)')
    parser.add_argument(
        '--out', metavar='FILE.pkl',
        help='also dump the detections of every image to a pickle file')
    parser.add_argument(
        '--show', action='store_true',
        help='display each image with its detections (needs a display)')
    parser.add_argument(
        '--show-dir', metavar='DIR',
        help='save images with detections drawn (DetVisualizationHook); a '
        'relative DIR is placed under work_dir/<timestamp>/. With several '
        'processes only rank 0 draws (its share of the images)')
    parser.add_argument(
        '--wait-time', type=float, default=2,
        help='seconds each image is shown with --show')
    parser.add_argument(
        '--score-thr', type=float, default=None,
        help='lowest score drawn by --show/--show-dir (hook default 0.3)')
    parser.add_argument(
        '--classwise', action='store_true',
        help='print AP per class (CocoMetric classwise=True)')
    parser.add_argument(
        '--json-prefix', metavar='PREFIX',
        help='write detections in COCO results format to PREFIX.bbox.json '
        '(CocoMetric outfile_prefix)')
    parser.add_argument(
        '--format-only', action='store_true',
        help='with --json-prefix: only write the JSON, do not evaluate (for '
        'test-dev, whose annotations are not public)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
        help='override config settings, e.g. '
        'test_dataloader.dataset.ann_file=annotations/x.json')
    parser.add_argument(
        '--cuda-graphs', type=int, default=0, metavar='N',
        help='replay the inference from CUDA graphs, one per input shape, '
        'for up to N shapes (model.cuda_graphs; pays when shapes repeat, '
        'e.g. a fixed test size; COCO\'s resized images have hundreds)')
    parser.add_argument(
        '--skip-data-check', action='store_true',
        help='do not check the test dataset before testing')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none', help='job launcher (dist_test.sh sets pytorch)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if args.format_only and not args.json_prefix:
        parser.error('--format-only needs --json-prefix')
    if args.out and not args.out.endswith(('.pkl', '.pickle')):
        parser.error('--out must end with .pkl or .pickle')
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def build_config(args: argparse.Namespace):
    """Load the config and apply the command-line options."""
    from projects.codetr.datasets.robust_loading import \
        use_robust_image_loading
    from projects.codetr.engine import cli_support, run_config

    if not osp.isfile(args.checkpoint) and '://' not in args.checkpoint:
        raise run_config.RunConfigError(
            f'Checkpoint not found: {args.checkpoint}')
    cfg = cli_support.load_config(args.config, args.launcher,
                                  args.cfg_options, args.work_dir)
    cfg.load_from = args.checkpoint
    if args.cuda_graphs:
        if cfg.model.get('type') != 'CoDETR':
            raise run_config.RunConfigError(
                '--cuda-graphs needs a CoDETR model, got '
                f"{cfg.model.get('type')!r}")
        cfg.model.cuda_graphs = args.cuda_graphs
    if args.show or args.show_dir:
        from mmdet.engine.hooks.utils import trigger_visualization_hook
        cfg = trigger_visualization_hook(cfg, args)
        if args.score_thr is not None:
            cfg.default_hooks.visualization.score_thr = args.score_thr
    if args.classwise:
        run_config.set_classwise(cfg, 'test_evaluator')
    if args.json_prefix:
        run_config.set_format_only(cfg, 'test_evaluator', args.json_prefix,
                                   args.format_only)
    use_robust_image_loading(cfg)
    return cfg


def main() -> None:
    args = parse_args()
    try:
        import_plugin()
        from projects.codetr.engine import cli_support
    except PluginImportError as err:
        sys.exit(f'error: {err}')
    with cli_support.exit_on_user_error(args.config):
        cfg = build_config(args)
        cli_support.prepare_run(cfg, ['test_dataloader'], args.launcher,
                                check_data=not args.skip_data_check)
    runner = cli_support.build_runner(cfg)
    if args.out is not None:
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(
            DumpDetResults(out_file_path=args.out))
    runner.test()
    cli_support.finish_distributed()


if __name__ == '__main__':
    main()
