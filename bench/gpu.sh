#!/usr/bin/env bash
# One call on a lent GPU machine (the `device` tool): build, CUDA tests, benchmarks, results to $OUT.
#   bash bench/gpu.sh [SECONDS]     (OUT defaults to bench/gpu_out; SECONDS: total budget, default 480)
#   STAGES="tests sweep test_cochleagram" bash bench/gpu.sh 300     (a subset; the build always runs)
# Stages run in order of value (build, correctness, cochleagram, spatial loss, training step, brain,
# the Triton weighted-sum sweep);
# each gets what is left of the budget, so a slow stage cannot take the results of the earlier ones
# with it. At most 8 files come back from $OUT: everything lands in the 8 below.
# The GPU machine has python3 with torch, triton, pytest and pytest-benchmark but no network; where
# pytest is missing it is installed from bench/wheels (fill it with `make wheels`, then carry it).
# The golden cochleagram fixtures ship in tests/fixtures: nothing to carry beside the tree.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
DEADLINE=$(( $(date +%s) + ${1:-480} ))
SCRATCH=$(mktemp -d)
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
STAGES=${STAGES:-tests test_cochleagram test_cochleagram_fast test_spatial_loss test_training_step test_brain sweep}
want() { [[ " $STAGES " == *" $1 "* ]]; }
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }
left() { echo $(( DEADLINE - $(date +%s) )); }
# run_for LOG CMD...: run CMD with what is left of the budget, appending to LOG; returns its code
run_for() {
  local logfile=$1; shift
  local budget; budget=$(left)
  if [ "$budget" -le 10 ]; then log "skipped (budget spent): $*"; return 124; fi
  timeout --kill-after=10 "$budget" "$@" >> "$logfile" 2>&1
  local rc=$?
  [ $rc -eq 124 ] && log "TIMED OUT after ${budget}s: $*"
  return $rc
}

log "$(date -u) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), budget $(left) s"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" \
  2>&1 | tee -a "$OUT/summary.txt"

if ! $PY -c "import pytest, pytest_benchmark" 2>/dev/null; then
  log "installing pytest + pytest-benchmark from bench/wheels"
  $PY -m pip install --no-index --find-links bench/wheels pytest pytest-benchmark >> "$OUT/build.log" 2>&1 \
    || { log "no pytest and no bench/wheels: run 'make wheels' here first"; exit 2; }
fi

log "build (MAX_JOBS=$MAX_JOBS)"
start=$(date +%s)
if ! run_for "$OUT/build.log" $PY -m pip install --no-build-isolation --no-deps -e .; then
  tail -40 "$OUT/build.log"; log "build FAILED"; exit 1
fi
log "built in $(( $(date +%s) - start )) s"

PYTEST=($PY -m pytest -q -rfE --tb=short -p no:cacheprovider)
tests_rc=0
if want tests; then
  log "CUDA tests"
  run_for "$OUT/tests.log" "${PYTEST[@]}" tests/test_cochleagram.py tests/test_spatial_loss.py \
    tests/test_spatial_lattice.py -k "cuda or gpu or split"
  tests_rc=$?
  # the fast mode's Triton kernels have only run under the CPU interpreter: all of them, on the card
  run_for "$OUT/tests.log" "${PYTEST[@]}" tests/test_cochleagram_fast_triton.py || tests_rc=1
  tail -15 "$OUT/tests.log" | tee -a "$OUT/summary.txt"
fi

sweep_rc=0
if want sweep; then
  log "Triton weighted-sum sweep"
  run_for "$OUT/sweep.txt" $PY bench/sweep_spatial_triton.py || sweep_rc=1
  sed -n '/best per size/,$p' "$OUT/sweep.txt" | tee -a "$OUT/summary.txt"
fi

log "benchmarks"
bench_rc=0
for file in test_cochleagram test_cochleagram_fast test_spatial_loss test_spatial_lattice test_training_step test_brain; do
  want $file || continue
  run_for "$OUT/bench.log" "${PYTEST[@]}" "bench/$file.py" --benchmark-only --full -s \
    --benchmark-json "$SCRATCH/$file.json" || bench_rc=1
done
grep -E "^(cochleagram|spatial_loss|dense|training|topographic|voxel)" "$OUT/bench.log"
# one JSON for bench/report.py, from the files that finished
$PY - "$SCRATCH" "$OUT/bench.json" <<'EOF'
import glob, json, sys
files = sorted(glob.glob(sys.argv[1] + "/*.json"))
merged = None
for path in files:
    data = json.load(open(path))
    merged = data if merged is None else {**merged, "benchmarks": merged["benchmarks"] + data["benchmarks"]}
if merged is not None:
    json.dump(merged, open(sys.argv[2], "w"), indent=1)
EOF
[ -f "$OUT/bench.json" ] && $PY bench/report.py "$OUT/bench.json" > "$OUT/report.md" 2>&1 && cat "$OUT/report.md"
log "tests rc=$tests_rc sweep rc=$sweep_rc bench rc=$bench_rc, $(left) s of the budget left"
exit $(( tests_rc || bench_rc || sweep_rc ))
