#!/usr/bin/env bash
# Convergence study on one GPU: Co-Deformable-DETR with K=2 auxiliary heads
# and K=0 (no auxiliary head), same data, schedule and seed, trained side by
# side on one GPU (each run alone leaves it mostly idle), then evaluated with
# tools/test.py and drawn into one PNG.
#
#   bash tools/analysis/run_convergence.sh [WORK_DIR] [extra train.py args]
#   e.g. bash tools/analysis/run_convergence.sh work_dirs/convergence --amp
# MAX_TRAIN_SECONDS=N stops both trainings after N s (the evaluation then uses
# the last checkpoint written).
set -euo pipefail
PY=${PYTHON:-python}
cd "$(dirname "$0")/../.."
WORK=${1:-work_dirs/convergence}
shift || true
CFG=configs/shapes/co_deformable_detr_r18_scratch_shapes
mkdir -p "$WORK"

"$PY" tools/generate_shapes_dataset.py --out data/shapes \
    --num-train 2000 --num-val 200 --seed 0

for k in k2 k0; do
    cfg=$CFG.py; [ $k = k0 ] && cfg=${CFG}_k0.py
    timeout -s INT "${MAX_TRAIN_SECONDS:-0}" \
        "$PY" tools/train.py "$cfg" --work-dir "$WORK/$k" "$@" \
        > "$WORK/$k.train.log" 2>&1 &
done
wait || true

for k in k2 k0; do
    cfg=$CFG.py; [ $k = k0 ] && cfg=${CFG}_k0.py
    ckpt=$(ls -t "$WORK/$k"/iter_*.pth | head -n 1)
    echo "== $k: tools/test.py $cfg $ckpt"
    "$PY" tools/test.py "$cfg" "$ckpt" --work-dir "$WORK/$k/test" \
        2>&1 | tee "$WORK/$k.test.log" | grep -E "Average|bbox_mAP_copypaste"
done
"$PY" tools/analysis/compare_runs.py "$WORK/k2" "$WORK/k0" \
    --labels 'K=2 (Faster R-CNN + ATSS)' 'K=0 (no auxiliary head)' \
    --out "$WORK/convergence.png"
