#!/bin/bash
# Two builds (this tree; .devrun/base = the tree before the offsets' shorter chains), tests on this one,
# then rounds alternating the two builds (ab26.py).
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
s=$SECONDS
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 1; }
echo "built $((SECONDS-s)) s  commit $(cat .devrun/commit)"
(cd .devrun/base && MAX_JOBS=16 python3 setup.py build_ext --inplace > $OUT/build_base.log 2>&1) || { tail -30 $OUT/build_base.log; exit 1; }
echo "built base $((SECONDS-s)) s"; ls .devrun/base/fibsparse_ext/*.so
timeout 150 python3 -m pytest -q -n 8 tests/test_hopper.py tests/test_kernels.py -k "hopper or gqa or window_alone" -p no:cacheprovider -p no:benchmark > $OUT/tests.log 2>&1
grep -E "passed|failed|FAILED|Error" $OUT/tests.log | tail -12; echo "tests $((SECONDS-s)) s"
orders=("base new" "new base" "base new")
for round in 1 2 3; do
  for side in ${orders[$((round-1))]}; do
    echo "=== round $round, $side  $(nvidia-smi --query-gpu=clocks.sm,temperature.gpu --format=csv,noheader)" | tee -a $OUT/ab.log
    if [[ $side == base ]]; then path=$PWD/.devrun/base; else path=$PWD; fi
    (cd /tmp && PYTHONPATH=$path timeout 100 python3 -c "import fibsparse_ext; print(fibsparse_ext.__file__)" 2>&1 | tee -a $OUT/ab.log)
    (cd /tmp && PYTHONPATH=$path timeout 100 python3 $OLDPWD/.devrun/ab26.py 2>&1 | tee -a $OUT/ab.log)
  done
done
gzip -f $OUT/build.log $OUT/build_base.log $OUT/tests.log
