#!/bin/bash
# issue 23 final measurements: before = /tmp/i23/before (topoaudio/ and its _C as of 19:50 UTC, the
# working tree before this work), after = /work/main with the rebuilt topoaudio._C.
R=/work/main/bench/results/cpu-2026-12-06-issue23
cd /work/main
ctx() { { echo "== $1 $(date -u +%FT%TZ)"; uptime; ps -eo pid,ni,pcpu,etime,args --sort=-pcpu | grep -v "ps -eo" | head -7 | cut -c1-140; } >> $R/load_log.txt; }
B="env PYTHONPATH=/tmp/i23/before STANDALONE=0 NEW=0 TAG=before"
A="env STANDALONE=0 NEW=0 TAG=after"
for pass in 1 2; do
  for tree in before after; do
    ctx "contention $tree $pass"
    if [ $tree = before ]; then P="$B"; else P="$A"; fi
    $P .venv/bin/python bench/contention.py --op spatial --busy 1,3 --repeats 5 > $R/contention_${tree}_$pass.txt 2>&1
  done
done
ctx "sizes"
for k in 0 3; do
  $B .venv/bin/python $R/scripts/sizes.py $k 7 256 1024 2048 4096 8192 > $R/sizes_before_busy$k.txt 2>&1
  $A .venv/bin/python $R/scripts/sizes.py $k 7 256 1024 2048 4096 8192 > $R/sizes_after_busy$k.txt 2>&1
done
ctx "phases"
$B .venv/bin/python $R/scripts/phases_before.py 3 9 > $R/phases_before_busy3.txt 2>&1
$A .venv/bin/python $R/scripts/phases_after.py 3 9 > $R/phases_after_busy3.txt 2>&1
ctx "omp wait policy"
for pol in passive active; do
  $B OMP_WAIT_POLICY=$pol .venv/bin/python $R/scripts/sizes.py 3 7 1024 8192 > $R/sizes_before_busy3_omp_$pol.txt 2>&1
  $A OMP_WAIT_POLICY=$pol .venv/bin/python $R/scripts/sizes.py 3 7 1024 8192 > $R/sizes_after_busy3_omp_$pol.txt 2>&1
done
ctx "host cost"
for v in none radius absolute; do
  $B .venv/bin/python $R/scripts/host_cost_loop.py $v 1 2 >> $R/host_cost_loop_before.txt 2>&1
  $A .venv/bin/python $R/scripts/host_cost_loop.py $v 1 2 >> $R/host_cost_loop_after.txt 2>&1
done
# (host_cost_{before,after}.txt: run by run_heavy_and_host_cost.sh from outside the checkout;
#  here python -m pytest put the checkout first on sys.path, so 'before' ran the new tree)
ctx "end"
echo done > $R/.done
