#!/bin/bash
# The check after round 58, second call (the build of s104.sh's call, kept warm; rebuilt if not):
# the GPU check's test selection, the bad-boundaries test, and any sanitizer the first call left.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 TORCH_CUDA_ARCH_LIST=9.0a
s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build2.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
timeout 330 python3 -m pytest -q -n 8 tests -k "cuda or gradcheck or hopper" -p no:cacheprovider -p no:benchmark > $OUT/gpu_tests.log 2>&1
echo "GPU tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/gpu_tests.log | tail -8
timeout 60 python3 -m pytest -v tests/test_varlen.py -k "bad_lengths_stop_the_cuda_kernels" -p no:cacheprovider -p no:benchmark 2>&1 | grep -E "PASS|FAIL|ERROR|passed|failed" | tee $OUT/boundaries_tests.log
for tool in ${SANITIZERS:-}; do
  timeout 100 compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse --tool $tool python3 tools/sanitize_kernels.py > $OUT/$tool.log 2>&1; echo "$tool rc=$? $((SECONDS-s)) s"; tail -1 $OUT/$tool.log
done
gzip -f $OUT/gpu_tests.log $OUT/build2.log
echo "done $((SECONDS-s)) s"
