#!/bin/bash
# The final commit (csrc changed after 89d74e5 only in comments): build; the stored-dS and fractional CUDA tests;
# memcheck; the fractional A/B.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
s=$SECONDS
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
timeout 90 python3 -m pytest -q -n 12 tests -k "stored_dscores or (cuda and frac)" -p no:cacheprovider -p no:benchmark > $OUT/tests.log 2>&1
echo "tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/tests.log | tail -5
timeout 40 compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse --tool memcheck python3 tools/sanitize_kernels.py > $OUT/memcheck.log 2>&1
echo "=== memcheck rc=$? $((SECONDS-s)) s"; tail -1 $OUT/memcheck.log
timeout 40 python3 .devrun/ab33.py ab 2>&1 | tee $OUT/ab33.log
gzip -f $OUT/tests.log $OUT/build.log
