#!/bin/bash
# Round 34, version A: build; the stored-dS tests (integer and fractional), the main grid's fractional CUDA cases,
# GQA blocks, packed-vs-dense; memcheck; the fractional A/B and kernel times.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
s=$SECONDS
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
timeout 200 python3 -m pytest -q -n 12 tests -k "stored_dscores or (cuda_matches_reference and frac) or gqa_heads_sharing or one_long_sequence or (gradcheck and cuda) or fractional" -p no:cacheprovider -p no:benchmark > $OUT/route_tests.log 2>&1
echo "tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/route_tests.log | head -30
timeout 60 compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse --tool memcheck python3 tools/sanitize_kernels.py > $OUT/memcheck.log 2>&1
echo "=== memcheck rc=$? $((SECONDS-s)) s"; tail -2 $OUT/memcheck.log
timeout 150 python3 .devrun/ab33.py ab 2>&1 | tee $OUT/ab33.log
echo "ab rc=$? $((SECONDS-s)) s"
timeout 60 python3 .devrun/ab33.py kernels 2>&1 | tee $OUT/kernels33.log
echo "kernels rc=$? $((SECONDS-s)) s"
gzip -f $OUT/route_tests.log
