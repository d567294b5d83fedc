#!/bin/bash
# Round 36, the final csrc: build; the stored-dS and fractional tests; memcheck; fractional against integer with
# kernel times; the fair sweep's configurations (our kernels and varlen_attn; FA4 not installed); racecheck.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
s=$SECONDS
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
timeout 150 python3 -m pytest -q -n 12 tests -k "stored_dscores or (cuda_matches_reference and frac) or gqa_heads_sharing or one_long_sequence or (gradcheck and cuda) or fractional" -p no:cacheprovider -p no:benchmark > $OUT/route_tests.log 2>&1
echo "tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED" $OUT/route_tests.log | tail -5; gzip -f $OUT/route_tests.log
timeout 60 compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse --tool memcheck python3 tools/sanitize_kernels.py > $OUT/memcheck.log 2>&1
echo "=== memcheck rc=$? $((SECONDS-s)) s"; tail -1 $OUT/memcheck.log
cd bench
FIBSPARSE_COMMIT=$(cat ../.devrun/commit) timeout 110 python3 bench_fractional.py --kernels > $OUT/bench_fractional.log 2>&1
echo "frac rc=$? $((SECONDS-s)) s"; grep -E "fractional / integer" $OUT/bench_fractional.log
FIBSPARSE_COMMIT=$(cat ../.devrun/commit) timeout 230 python3 bench_sweep.py --fair --out $OUT/sweep_fair > $OUT/sweep_fair.log 2>&1
echo "sweep rc=$? $((SECONDS-s)) s"; grep -E "^\[|window only" $OUT/sweep_fair.log | cut -c1-160
cd ..
timeout 80 compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse --tool racecheck python3 tools/sanitize_kernels.py > $OUT/racecheck.log 2>&1
echo "=== racecheck rc=$? $((SECONDS-s)) s"; tail -1 $OUT/racecheck.log
