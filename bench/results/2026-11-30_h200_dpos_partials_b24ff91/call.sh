#!/bin/bash
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 MAX_JOBS=16
FIBSPARSE_COMMIT=$(cat .devrun/commit) bash tools/gpu_check.sh --quick 2>&1 | tail -25
echo "=== frac kernels"
timeout 100 python3 .devrun/frac_kernels.py 2>&1 | grep -v Warn | tee $OUT/frac_kernels.log | grep -v "^\s*$" | grep -v "_warn_once"
echo "=== ab_frac (this build only)"
timeout 100 python3 .devrun/ab_frac.py 2>&1 | tee $OUT/ab_frac.log
