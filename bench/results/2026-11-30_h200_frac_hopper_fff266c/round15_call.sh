#!/bin/bash
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 OMP_NUM_THREADS=2
echo "commit $(cat .devrun/commit)"; nvidia-smi --query-gpu=name,clocks.sm --format=csv,noheader
s=$SECONDS; python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1 || { tail -20 $OUT/build.log; exit 1; }
echo "build $((SECONDS-s)) s"
s=$SECONDS
timeout 200 python3 -m pytest -q -n 8 tests/test_hopper.py tests/test_reliability.py tests/test_kernels.py -k "cuda or hopper or Hopper" -p no:cacheprovider -p no:benchmark > $OUT/tests.log 2>&1
grep -E "passed|failed|FAILED|Error" $OUT/tests.log | tail -25; echo "tests $((SECONDS-s)) s"
s=$SECONDS
FIBSPARSE_FUZZ_CASES=1500 timeout 150 python3 -m pytest -q -n 8 tests/test_fuzz.py -k cuda -p no:cacheprovider -p no:benchmark > $OUT/fuzz.log 2>&1
grep -E "passed|failed|FAILED" $OUT/fuzz.log | tail -8; echo "fuzz $((SECONDS-s)) s"
timeout 150 python3 .devrun/ab_frac_hopper.py 2>&1 | tee $OUT/ab_frac_hopper.log
gzip -f $OUT/tests.log $OUT/fuzz.log $OUT/build.log
