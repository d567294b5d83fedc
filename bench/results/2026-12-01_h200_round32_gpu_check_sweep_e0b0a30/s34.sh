#!/bin/bash
# After review (host code and tests only; kernels SASS-identical to e0b0a30): build; the stored-dS, window-alone
# and every-output-written tests with the poisoned buffers; memcheck over the sanitizer script (now also the general
# integer passes).
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
s=$SECONDS
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
timeout 100 python3 -m pytest -q -n 12 tests -k "stored_dscores or window_alone or every_output_element or writes_every_output or one_long_sequence or gqa_heads_sharing" -p no:cacheprovider -p no:benchmark > $OUT/review_tests.log 2>&1
echo "tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/review_tests.log | tail -8
timeout 60 compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse --tool memcheck python3 tools/sanitize_kernels.py > $OUT/memcheck.log 2>&1
echo "=== memcheck rc=$? $((SECONDS-s)) s"; tail -2 $OUT/memcheck.log
gzip -f $OUT/review_tests.log
