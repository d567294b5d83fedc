#!/bin/bash
# One build; rounds alternate FIBSPARSE_DQ_PREFETCH=0 (off) and unset (on); then tests with it on.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
s=$SECONDS
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s  commit $(cat .devrun/commit)"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
orders=("off on" "on off" "off on" "on off")
for round in 1 2 3 4; do
  for side in ${orders[$((round-1))]}; do
    echo "=== round $round, prefetch $side  $(nvidia-smi --query-gpu=clocks.sm,temperature.gpu --format=csv,noheader)" | tee -a $OUT/ab.log
    if [[ $side == off ]]; then export FIBSPARSE_DQ_PREFETCH=0; else unset FIBSPARSE_DQ_PREFETCH; fi
    (cd /tmp && timeout 100 python3 $OLDPWD/.devrun/ab22.py 2>&1 | tee -a $OUT/ab.log)
  done
done
unset FIBSPARSE_DQ_PREFETCH
echo "=== tests (prefetch on)"
s=$SECONDS
timeout 150 python3 -m pytest -q -n 8 tests/test_kernels.py tests/test_cuda.py tests/test_varlen.py tests/test_gradcheck.py tests/test_reliability.py -k "cuda" -p no:cacheprovider -p no:benchmark > $OUT/tests.log 2>&1
grep -E "passed|failed|FAILED" $OUT/tests.log | tail -8; echo "tests $((SECONDS-s)) s"
FIBSPARSE_FUZZ_CASES=600 timeout 70 python3 -m pytest -q -n 8 tests/test_fuzz.py -k cuda -p no:cacheprovider -p no:benchmark 2>&1 | tail -2
echo "=== memcheck"; timeout 90 compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse --tool memcheck python3 tools/sanitize_kernels.py 2>&1 | tail -3
gzip -f $OUT/tests.log $OUT/build.log
