#!/usr/bin/env bash
# The prepared script for a lent GPU machine (run from the repository root there; see README "GPU").
# Installs peftaudit without network (wheels carried in .whl/), then, each step under its own time
# limit so one slow step cannot eat the lease:
#   1. the gpu-marked tests;
#   2. the quick audit on CUDA, inline;
#   3. the same audit on CUDA in a pool of 2 spawned workers (CUDA in spawned children);
#   4. benchmarks/gpu_check.py (CPU vs CUDA verdicts, throughput and time to solution at d = 64).
# Both reports' report.json land in $OUT for the comparison with the CPU reference
# (benchmarks/compare_reports.py).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
log() { echo "== $(date -u +%H:%M:%S) $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . || {
  echo "pip could not build peftaudit here: copying the packages as setuptools' package-dir maps them"
  cp -r peftaudit /tmp/site/ && cp -r verify strategies models /tmp/site/peftaudit/; }
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
REPO=$PWD
cd /tmp   # so that the installed package is imported, not the source folder
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
log "1. gpu tests"
timeout 90 python3 -m pytest -q -p no:cacheprovider -m gpu "$REPO/tests/test_search.py" 2>&1 | tail -5
for mode in inline process; do
  log "2/3. quick audit on CUDA, backend $mode"
  start=$SECONDS
  timeout 150 python3 -m peftaudit.cli audit --profile quick --seed 0 --device cuda --backend $mode \
      --jobs $([ $mode = inline ] && echo 1 || echo 2) --out /tmp/audit-$mode > /tmp/audit-$mode.txt 2>&1
  echo "exit $? in $((SECONDS - start)) s"; grep -v '^\[peftaudit\]' /tmp/audit-$mode.txt | tail -22
  cp /tmp/audit-$mode/report.json "$OUT/report-cuda-$mode.json" 2>/dev/null
done
log "4. gpu_check"
timeout 150 python3 "$REPO/benchmarks/gpu_check.py" 2>&1 | tee "$OUT/gpu_check.log" | grep -v '^{'
log done
