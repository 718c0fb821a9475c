#!/usr/bin/env bash
# Issue 21 item 4's check: does the AST learn the words when its heads read the maximum over
# tokens, as cochcnn's did after issue 11? Two runs alike but for --pooling: the AST config of
# issue 13 without a topographic term, at the study's budget (3,200 steps of 16 clips, fresh
# clips: train_size 80000), seed 0, one after the other on the same 2 cores.
#   bash docs/run_logs/ast-pooling-issue21/run.sh RUNS_DIR
set -euo pipefail
RUNS=${1:?RUNS_DIR}
PY=${PYTHON:-python}
for pooling in mean max; do
  $PY train.py --config configs/ast_spatial_scenes.json --topo none --steps 3200 --train_size 80000 \
    --num_workers 1 --eval_every 500 --checkpoint_every 100 --seed 0 --pooling $pooling \
    --out "$RUNS/ast-none-$pooling" $( [ -f "$RUNS/ast-none-$pooling/checkpoint.pt" ] && echo --resume )
done
