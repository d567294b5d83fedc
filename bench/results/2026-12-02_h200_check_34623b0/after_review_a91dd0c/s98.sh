#!/bin/bash
# After the review of rounds 55-56 (SASS of 34623b0): build; the Hopper and packed-batch tests, with the new packed shape.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 TORCH_CUDA_ARCH_LIST=9.0a
s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
timeout 200 python3 -m pytest -q -n 8 tests/test_hopper.py tests/test_varlen.py -p no:cacheprovider -p no:benchmark > $OUT/hopper_varlen_tests.log 2>&1
echo "tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/hopper_varlen_tests.log | tail -8
gzip -f $OUT/build.log
echo "done $((SECONDS-s)) s"
