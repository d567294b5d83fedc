#!/bin/bash
# The window alone's tests after the stored-dS test gained a call without dlse (no kernel change since 4c36398).
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
s=$SECONDS
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 1; }
echo "built $((SECONDS-s)) s  commit $(cat .devrun/commit)"
timeout 90 python3 -m pytest -q -n 8 tests/test_kernels.py -k "window_alone" -p no:cacheprovider -p no:benchmark 2>&1 | tail -3
