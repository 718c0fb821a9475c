#!/bin/bash
# issue 23, part 2: the issue-like heavier load (3 spinners + a training-like torch job), and the
# host-cost benchmark of the before tree run from outside the checkout (python -m puts the cwd first).
R=/work/main/bench/results/cpu-2026-12-06-issue23
cd /work/main
ctx() { { echo "== $1 $(date -u +%FT%TZ)"; uptime; ps -eo pid,ni,pcpu,etime,args --sort=-pcpu | grep -v "ps -eo" | head -7 | cut -c1-140; } >> $R/load_log.txt; }
for pass in 1 2; do
  for tree in before after; do
    ctx "contention heavy $tree $pass"
    if [ $tree = before ]; then P="env PYTHONPATH=/tmp/i23/before"; else P="env"; fi
    $P .venv/bin/python bench/contention.py --op spatial --busy 1,3,3+1 --repeats 5 > $R/contention_heavy_${tree}_$pass.txt 2>&1
  done
done
ctx "host cost pytest"
(cd /tmp && PYTHONPATH=/tmp/i23/before /work/main/.venv/bin/python -m pytest -p no:cacheprovider --rootdir /work/main /work/main/bench/test_host_cost.py --benchmark-only -q > $R/host_cost_before.txt 2>&1)
(cd /tmp && /work/main/.venv/bin/python -m pytest -p no:cacheprovider --rootdir /work/main /work/main/bench/test_host_cost.py --benchmark-only -q > $R/host_cost_after.txt 2>&1)
ctx "end 2"
