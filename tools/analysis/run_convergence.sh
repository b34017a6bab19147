#!/usr/bin/env bash
# Convergence benchmark of Co-Deformable-DETR's auxiliary heads on the
# generated shapes data: five arms (K=0; K=1 ATSS; K=1 Faster R-CNN; K=2;
# K=2 without customised positive queries), ResNet-18 from scratch, trained
# for the same iterations with the same data, seed (0), schedule and batch,
# COCO box mAP on val every VAL_INTERVAL iterations during training. One
# process per arm, all at once, round-robin over the visible GPUs (CPU if
# none). The driver is tools/analysis/convergence.py: its docstring says what
# is measured, how the schedule follows ITERS, and how long it takes.
#
#   bash tools/analysis/run_convergence.sh [WORK] [--iters 2000]
#       [--val-interval 500] [--amp] [--arms k0 atss rcnn k2 nopos]
#       [--data-root data/shapes --num-train 2000 --num-val 200]
#       [-- extra tools/train.py arguments]
#   (or ITERS=..., VAL_INTERVAL=..., ARMS=..., DATA_ROOT=..., NUM_TRAIN=...,
#    NUM_VAL=... in the environment)
#
# Detached, then polled:
#   setsid nohup bash tools/analysis/run_convergence.sh work_dirs/conv --amp \
#       > work_dirs/conv.out 2>&1 &
#   cat work_dirs/conv/progress.txt
# Tables and plot now, from the logs so far (also while the runs go):
#   bash tools/analysis/run_convergence.sh work_dirs/conv --summarize-only
# Results: WORK/convergence.md (mAP, mAP50, mAP75 tables), .json, .png;
# per arm WORK/<arm>.log and WORK/<arm>/ (checkpoints, scalars.json).
# Exit status 1 if an arm failed or misses an evaluation.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec "${PYTHON:-python}" tools/analysis/convergence.py "$@"
