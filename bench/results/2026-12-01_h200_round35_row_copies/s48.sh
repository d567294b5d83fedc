#!/bin/bash
# Round 35: build; kernel times (bench_fractional --kernels); the fair sweep's configurations (our kernels, varlen peer).
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
s=$SECONDS
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
cd bench
FIBSPARSE_COMMIT=$(cat ../.devrun/commit) timeout 120 python3 bench_fractional.py --kernels 2>&1 | tee $OUT/bench_fractional.log
echo "frac rc=$? $((SECONDS-s)) s"
FIBSPARSE_COMMIT=$(cat ../.devrun/commit) timeout 240 python3 bench_sweep.py --fair --out $OUT/sweep_fair > $OUT/sweep_fair.log 2>&1
echo "sweep rc=$? $((SECONDS-s)) s"; tail -25 $OUT/sweep_fair.log
