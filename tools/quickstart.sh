#!/usr/bin/env bash
# Quickstart (run by `make quickstart` after the installer): generate the
# shapes dataset, train the small Co-DETR of
# configs/shapes/co_deformable_detr_quickstart.py and evaluate its last
# checkpoint with tools/test.py, which prints the COCO mAP table.
# About 15 minutes on 2 CPU cores; with a GPU it trains 4x longer.
#   QUICKSTART_ITERS=N   training iterations (default 400 on CPU, 2400 on GPU)
#   QUICKSTART_DIR=DIR   work dir (default work_dirs/quickstart)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
CFG=configs/shapes/co_deformable_detr_quickstart.py
WORK=${QUICKSTART_DIR:-work_dirs/quickstart}

if "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    ITERS=${QUICKSTART_ITERS:-2400}; DEVICE=GPU
else
    ITERS=${QUICKSTART_ITERS:-400}; DEVICE=CPU
fi
echo "== quickstart: 1/3 generate data/shapes_quick"
"$PY" tools/generate_shapes_dataset.py --out data/shapes_quick \
    --num-train 1000 --num-val 100 --min-side 160 --max-side 320 --seed 0

echo "== quickstart: 2/3 train $CFG for $ITERS iterations on the $DEVICE"
"$PY" tools/train.py "$CFG" --work-dir "$WORK" --cfg-options \
    train_cfg.max_iters="$ITERS" train_cfg.val_interval="$ITERS" \
    "param_scheduler.1.end=$ITERS" \
    "param_scheduler.1.milestones=[$((ITERS * 4 / 5))]" \
    default_hooks.checkpoint.interval="$ITERS"

echo "== quickstart: 3/3 evaluate $WORK/iter_$ITERS.pth with tools/test.py"
"$PY" tools/test.py "$CFG" "$WORK/iter_$ITERS.pth" --work-dir "$WORK/test"
echo "== quickstart done: curves with" \
    "python tools/analysis/plot_curves.py $WORK"
