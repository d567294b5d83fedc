#!/bin/bash
# One build; rounds alternate FIBSPARSE_WINDOW_DSCORES=0 (general) and unset (stored dS); then tests, fuzz, sanitizers.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
s=$SECONDS
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 1; }
echo "built $((SECONDS-s)) s  commit $(cat .devrun/commit)"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
echo "=== new tests first"
timeout 60 python3 -m pytest -q -x -n 8 tests/test_kernels.py -k "window_alone" -p no:cacheprovider -p no:benchmark 2>&1 | tail -4
orders=("general stored" "stored general" "general stored")
for round in 1 2 3; do
  for side in ${orders[$((round-1))]}; do
    echo "=== round $round, $side  $(nvidia-smi --query-gpu=clocks.sm,temperature.gpu --format=csv,noheader)" | tee -a $OUT/ab.log
    if [[ $side == general ]]; then export FIBSPARSE_WINDOW_DSCORES=0; else unset FIBSPARSE_WINDOW_DSCORES; fi
    (cd /tmp && timeout 100 python3 $OLDPWD/.devrun/ab25.py 2>&1 | tee -a $OUT/ab.log)
  done
done
unset FIBSPARSE_WINDOW_DSCORES
echo "=== tests"
s=$SECONDS
timeout 170 python3 -m pytest -q -n 8 tests -k "cuda or gradcheck" -p no:cacheprovider -p no:benchmark > $OUT/tests.log 2>&1
grep -E "passed|failed|FAILED" $OUT/tests.log | tail -12; echo "tests $((SECONDS-s)) s"
sanitize="compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse"
for tool in memcheck racecheck; do
  echo "=== $tool"; timeout 80 $sanitize --tool $tool python3 tools/sanitize_kernels.py 2>&1 | tail -3
done
gzip -f $OUT/tests.log $OUT/build.log
