#!/bin/bash
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 MAX_JOBS=16
FIBSPARSE_COMMIT=$(cat .devrun/commit) bash tools/gpu_check.sh --quick 2>&1 | tail -25
ls bench/results/ | tail -3
echo "=== ab_pair (this build, one run)"
timeout 120 python3 .devrun/ab_pair.py 2>&1 | tee $OUT/ab_pair_after.log
