#!/bin/bash
# A/B: .devrun/main_tree (before) against the work tree (after), both built here; rounds alternate the order.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
root=$PWD
rm -rf /tmp/before && cp -r .devrun/main_tree /tmp/before
s=$SECONDS
(cd /tmp/before && MAX_JOBS=8 python3 setup.py build_ext --inplace -q > $OUT/build_before.log 2>&1; echo "before built rc=$? $((SECONDS-s)) s") &
MAX_JOBS=8 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build_after.log 2>&1; echo "after built rc=$? $((SECONDS-s)) s  commit $(cat .devrun/commit)"
wait
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv
for round in 1 2 3; do
  order="before after"; [[ $((round % 2)) == 0 ]] && order="after before"
  for side in $order; do
    dir=/tmp/before; [[ $side == after ]] && dir=$root
    echo "=== round $round, $side  $(nvidia-smi --query-gpu=clocks.sm,temperature.gpu --format=csv,noheader)" | tee -a $OUT/ab.log
    (cd /tmp && PYTHONPATH=$dir timeout 150 python3 $root/.devrun/ab_band.py 2>&1 | tee -a $OUT/ab.log)
  done
done
echo "=== tests (after build)"
s=$SECONDS
timeout 170 python3 -m pytest -q -n 8 tests/test_kernels.py tests/test_cuda.py tests/test_varlen.py tests/test_gradcheck.py tests/test_reliability.py tests/test_hopper.py -k "cuda or hopper or Hopper" --deselect tests/test_hopper.py::test_ptxas_keeps_the_hopper_forwards_wgmma_asynchronous -p no:cacheprovider -p no:benchmark > $OUT/tests.log 2>&1
grep -E "passed|failed|FAILED" $OUT/tests.log | tail -8; echo "tests $((SECONDS-s)) s"
FIBSPARSE_FUZZ_CASES=800 timeout 80 python3 -m pytest -q -n 8 tests/test_fuzz.py -k cuda -p no:cacheprovider -p no:benchmark 2>&1 | tail -2
gzip -f $OUT/tests.log $OUT/build_before.log $OUT/build_after.log
