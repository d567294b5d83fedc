#!/bin/bash
# Round 34, the final commit (kernels of 414c55a; tests and records since): build; the GPU test selection with the
# Hopper forward's tests; memcheck.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
s=$SECONDS
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
timeout 270 python3 -m pytest -q -n 10 tests -k "cuda or gradcheck or hopper" -p no:cacheprovider -p no:benchmark > $OUT/tests.log 2>&1
echo "tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/tests.log | tail -12
timeout 40 compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse --tool memcheck python3 tools/sanitize_kernels.py > $OUT/memcheck.log 2>&1
echo "=== memcheck rc=$? $((SECONDS-s)) s"; tail -2 $OUT/memcheck.log
gzip -f $OUT/build.log $OUT/tests.log
