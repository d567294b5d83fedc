#!/bin/bash
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 OMP_NUM_THREADS=2
echo "commit $(cat .devrun/commit)  $(date -u +%FT%TZ)"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
s=$SECONDS; python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1 || { tail -20 $OUT/build.log; exit 1; }
echo "build $((SECONDS-s)) s"
s=$SECONDS
timeout 150 python3 -m pytest -q -n 8 tests/test_hopper.py tests/test_varlen.py -k "cuda or hopper or Hopper" -p no:cacheprovider -p no:benchmark > $OUT/tests.log 2>&1
grep -E "passed|failed|FAILED|Error" $OUT/tests.log | tail -12; echo "tests $((SECONDS-s)) s"
grep -c "reads_the_row_before" $OUT/tests.log; python3 -m pytest -q tests/test_hopper.py -k reads_the_row_before -p no:cacheprovider -p no:benchmark 2>&1 | tail -1
