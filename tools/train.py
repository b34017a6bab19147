"""Train a detector with an MMDetection 3.x config (Co-DETR plugin included).

Single process::

    python tools/train.py configs/co_deformable_detr_r50_1x_coco.py

Several GPUs / processes (see tools/dist_train.sh)::

    bash tools/dist_train.sh configs/co_deformable_detr_r50_1x_coco.py 8

Before the runner is built, the datasets of the config are checked (paths,
class names against the annotation file and the model's ``num_classes``,
malformed boxes). The config states the whole run: the shipped ones declare
the random-state hook for exact ``--resume`` and the image loader that skips
unreadable training images; a config without them gets them added, with a
log line saying so.
"""
import argparse
import os
import sys

from _plugin import PluginImportError, import_plugin
from mmengine.config import DictAction

EPILOG = """\
examples:
  resume the latest checkpoint of the work dir after an interruption:
    python tools/train.py CONFIG --resume
  per-class AP in the validation table:
    python tools/train.py CONFIG --cfg-options val_evaluator.classwise=True
  4 GPUs with the learning rate scaled from the config's base batch size:
    bash tools/dist_train.sh CONFIG 4 --auto-scale-lr
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Train a detector.', epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file')
    parser.add_argument(
        '--work-dir',
        help='folder for logs and checkpoints (default: the config\'s '
        'work_dir, else ./work_dirs/<config name>)')
    parser.add_argument(
        '--amp', action='store_true',
        help='automatic mixed precision (AmpOptimWrapper, dynamic loss '
        'scale); needs CUDA')
    parser.add_argument(
        '--auto-scale-lr', action='store_true',
        help='scale the learning rate by (GPUs x batch per GPU) / '
        'auto_scale_lr.base_batch_size of the config')
    parser.add_argument(
        '--resume', nargs='?', const='auto', metavar='CHECKPOINT',
        help='continue training: model, optimizer, LR schedule, epoch/'
        'iteration and random states. Without CHECKPOINT, the latest one '
        'in the work dir (none yet: start from scratch)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
        help='override config settings, e.g. train_dataloader.batch_size=4 '
        'or "optim_wrapper.optimizer.lr=1e-4"; lists as key="[a,b]"')
    parser.add_argument(
        '--skip-data-check', action='store_true',
        help='do not check the datasets before training (saves the time of '
        'reading the annotation files once more)')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none', help='job launcher (dist_train.sh sets pytorch)')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or
    # --local_rank; torchrun sets LOCAL_RANK instead.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def build_config(args: argparse.Namespace):
    """Load the config and apply the command-line options."""
    from projects.codetr.engine import cli_support, run_config

    cfg = cli_support.load_config(args.config, args.launcher,
                                  args.cfg_options, args.work_dir)
    if args.amp:
        run_config.enable_amp(cfg)
    if args.auto_scale_lr:
        run_config.enable_auto_scale_lr(cfg)
    run_config.set_resume(cfg, args.resume, log=cli_support.say)
    run_config.add_missing_safeguards(cfg, log=cli_support.say)
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
        loaders = ['train_dataloader']
        if cfg.get('val_cfg') and cfg.get('val_dataloader'):
            loaders.append('val_dataloader')
        cli_support.prepare_run(cfg, loaders, args.launcher,
                                check_data=not args.skip_data_check)
    cli_support.build_runner(cfg).train()
    cli_support.finish_distributed()


if __name__ == '__main__':
    main()
