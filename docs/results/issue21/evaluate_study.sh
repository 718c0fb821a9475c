#!/usr/bin/env bash
# Evaluate the issue-21 study once its 15 runs are trained (train_study.py), as issue 12 did:
# two evaluations, each on one kind of sheet (none + spatial on channel_freq sheets; none +
# topoloss on the TopoLoss runs' channels sheets), the readout per run, then the tables.
#   bash docs/results/issue21/evaluate_study.sh RUNS_DIR OUT_DIR
# RUNS_DIR: train_study.py's --runs (checkpoints); OUT_DIR: where the evaluations go (big: maps,
# figures). The metrics and readouts that RESULTS.md reads are copied into docs/results/issue21/.
# Needs TOPOAUDIO_NATSOUND165 (the 165 NH2015 sounds).
set -euo pipefail
RUNS=${1:?RUNS_DIR}
OUT=${2:?OUT_DIR}
: "${TOPOAUDIO_NATSOUND165:?set it to the directory of the 165 NH2015 sounds}"
HERE="$(cd "$(dirname "$0")" && pwd)"
PY=${PYTHON:-python}
SEEDS="0 1 2 3 4"
ck() { for setting in "$@"; do for seed in $SEEDS; do
  echo --checkpoint "$RUNS/$setting-seed$seed/checkpoint.pt"; done; done; }
for setting in none spatial topoloss; do for seed in $SEEDS; do
  test -f "$RUNS/$setting-seed$seed/checkpoint.pt" || { echo "missing run $setting-seed$seed"; exit 1; }
done; done
mkdir -p "$OUT" "$HERE/readout"
$PY -m topoaudio.evaluate --natsound165 "$TOPOAUDIO_NATSOUND165" --out "$OUT/eval_cf" $(ck none spatial)
$PY -m topoaudio.evaluate --natsound165 "$TOPOAUDIO_NATSOUND165" --out "$OUT/eval_ch" \
  --sheet channels $(ck none topoloss)
cp "$OUT/eval_cf/metrics.json" "$HERE/metrics_channel_freq.json"
cp "$OUT/eval_ch/metrics.json" "$HERE/metrics_channels.json"
for setting in none spatial topoloss; do for seed in $SEEDS; do
  $PY -m topoaudio.readout --checkpoint "$RUNS/$setting-seed$seed/checkpoint.pt" --dataset scenes \
    --scenes_train 600 --scenes_test 300 --out "$HERE/readout/$setting-seed$seed.json"
done; done
$PY "$HERE/tables.py" "$HERE/metrics_channel_freq.json" "$HERE/metrics_channels.json" \
  > "$HERE/tables.md"
echo "tables: $HERE/tables.md"
