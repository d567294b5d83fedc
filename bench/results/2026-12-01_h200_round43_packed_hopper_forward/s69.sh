#!/bin/bash
# Round 43: build the change (packed batches on the Hopper forward) and f68f361 side by side; three A/B
# rounds rotating the builds (packed and dense forwards, forward and forward+backward); per-kernel times of both.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
root=$PWD
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit) against f68f361"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
rm -rf /tmp/head && cp -r .devrun/base43 /tmp/head
s=$SECONDS
(cd /tmp/head && MAX_JOBS=8 python3 setup.py build_ext --inplace -q > $OUT/build_head.log 2>&1; echo "f68f361 built rc=$? $((SECONDS-s)) s") &
MAX_JOBS=8 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "change built rc=$? $((SECONDS-s)) s"
wait
timeout 120 python3 -m pytest -q -n 8 tests/test_varlen.py tests/test_hopper.py -k "cuda or hopper" -p no:cacheprovider -p no:benchmark 2>&1 | grep -E "passed|failed|FAILED|Error" | tail -8
echo "varlen and hopper tests $((SECONDS-s)) s"
orders=("head change" "change head" "head change")
for round in 1 2 3; do
  for side in ${orders[$((round-1))]}; do
    echo "=== round $round, $side" | tee -a $OUT/ab.log
    if [[ $side == head ]]; then
      (cd /tmp && PYTHONPATH=/tmp/head timeout 150 python3 $root/.devrun/ab43.py 2>&1 | grep -v -i warn | tee -a $OUT/ab.log)
    else
      (cd /tmp && timeout 150 python3 $root/.devrun/ab43.py 2>&1 | grep -v -i warn | tee -a $OUT/ab.log)
    fi
  done
done
for side in head change; do
  echo "=== kernels, $side" | tee -a $OUT/kernels.log
  if [[ $side == head ]]; then
    (cd /tmp && PYTHONPATH=/tmp/head timeout 150 python3 $root/.devrun/ab43.py --kernels 2>&1 | grep -v -i warn | tee -a $OUT/kernels.log)
  else
    (cd /tmp && timeout 150 python3 $root/.devrun/ab43.py --kernels 2>&1 | grep -v -i warn | tee -a $OUT/kernels.log)
  fi
done
gzip -f $OUT/build*.log
echo "done $((SECONDS-s)) s"
