#!/bin/bash
# Round 36, the fractional step's candidate: build; mini36 (kernel times at 64k GQA); the stored-dS and fractional
# tests; memcheck; bench_fractional.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
s=$SECONDS
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
timeout 60 python3 .devrun/mini36.py 2>&1 | grep -v -i warn | tee $OUT/mini36.log
timeout 100 python3 -m pytest -q -n 12 tests -k "stored_dscores or (cuda_matches_reference and frac) or gqa_heads_sharing or one_long_sequence or (gradcheck and cuda) or fractional" -p no:cacheprovider -p no:benchmark > $OUT/route_tests.log 2>&1
echo "tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED" $OUT/route_tests.log | tail -3; gzip -f $OUT/route_tests.log
timeout 40 compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse --tool memcheck python3 tools/sanitize_kernels.py > $OUT/memcheck.log 2>&1
echo "=== memcheck rc=$? $((SECONDS-s)) s"; tail -1 $OUT/memcheck.log
cd bench && FIBSPARSE_COMMIT=$(cat ../.devrun/commit) timeout 80 python3 bench_fractional.py > $OUT/bench_fractional.log 2>&1
echo "frac rc=$? $((SECONDS-s)) s"; grep -E "^L=|integer |frac_stored|fractional / integer" $OUT/bench_fractional.log
