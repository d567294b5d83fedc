#!/bin/bash
# Round 37: build; mini36 (kernel times at 64k GQA); the GPU check's test selection; memcheck, racecheck, synccheck;
# bench_fractional --kernels.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
s=$SECONDS
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
timeout 60 python3 .devrun/mini36.py 2>&1 | grep -v -i warn | tee $OUT/mini36.log
timeout 260 python3 -m pytest -q -n 8 tests -k "cuda or gradcheck or hopper" -p no:cacheprovider -p no:benchmark > $OUT/gpu_tests.log 2>&1
echo "tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/gpu_tests.log | tail -5; gzip -f $OUT/gpu_tests.log
for tool in memcheck racecheck synccheck; do
  timeout 80 compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse --tool $tool python3 tools/sanitize_kernels.py > $OUT/$tool.log 2>&1
  echo "=== $tool rc=$? $((SECONDS-s)) s"; tail -1 $OUT/$tool.log
done
cd bench && FIBSPARSE_COMMIT=$(cat ../.devrun/commit) timeout 100 python3 bench_fractional.py --kernels > $OUT/bench_fractional.log 2>&1
echo "frac rc=$? $((SECONDS-s)) s"; grep -E "^L=|integer |frac_stored|fractional / integer|us " $OUT/bench_fractional.log | head -40
