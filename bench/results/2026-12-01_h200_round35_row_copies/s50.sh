#!/bin/bash
# The GPU check's test selection with the Hopper forward's tests, memcheck and racecheck, at the final csrc.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
s=$SECONDS
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
timeout 330 python3 -m pytest -q -n 8 tests -k "cuda or gradcheck or hopper" -p no:cacheprovider -p no:benchmark > $OUT/gpu_check_tests.log 2>&1
echo "tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED" $OUT/gpu_check_tests.log | tail -5
timeout 60 compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse --tool memcheck python3 tools/sanitize_kernels.py > $OUT/memcheck.log 2>&1
echo "=== memcheck rc=$? $((SECONDS-s)) s"; tail -1 $OUT/memcheck.log
timeout 100 compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse --tool racecheck python3 tools/sanitize_kernels.py > $OUT/racecheck.log 2>&1
echo "=== racecheck rc=$? $((SECONDS-s)) s"; tail -1 $OUT/racecheck.log
gzip -f $OUT/gpu_check_tests.log
