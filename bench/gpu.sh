#!/usr/bin/env bash
# One call on a lent GPU machine (the `device` tool): build, CUDA tests, benchmarks, results to $OUT.
#   bash bench/gpu.sh            (OUT defaults to bench/gpu_out)
# The GPU machine has python3 with torch, triton and torchaudio but no network: pytest and
# pytest-benchmark come from bench/wheels (fill it here with `make wheels`, then carry it).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }

log "$(date -u) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/summary.txt"

if ! $PY -c "import pytest, pytest_benchmark" 2>/dev/null; then
  log "installing pytest + pytest-benchmark from bench/wheels"
  $PY -m pip install --no-index --find-links bench/wheels pytest pytest-benchmark > "$OUT/pip.log" 2>&1 \
    || { log "no pytest and no bench/wheels: run 'make wheels' here first"; exit 2; }
fi

log "build"
start=$(date +%s)
if ! $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; log "build FAILED"; exit 1
fi
log "built in $(( $(date +%s) - start )) s"

log "CUDA tests"
$PY -m pytest tests/test_cochleagram.py tests/test_spatial_loss.py -q -k "cuda or dispatch or fixture or opcheck" -p no:cacheprovider \
  > "$OUT/tests.log" 2>&1
tests_rc=$?
tail -5 "$OUT/tests.log" | tee -a "$OUT/summary.txt"

log "benchmarks"
$PY -m pytest bench --benchmark-only --benchmark-json "$OUT/bench.json" -q -s -p no:cacheprovider \
  > "$OUT/bench.log" 2>&1
bench_rc=$?
grep -E "^(cochleagram|spatial)" "$OUT/bench.log" | tee -a "$OUT/summary.txt"
$PY bench/report.py "$OUT/bench.json" > "$OUT/report.md" 2>&1 && cat "$OUT/report.md"
log "tests rc=$tests_rc bench rc=$bench_rc"
exit $(( tests_rc || bench_rc ))
