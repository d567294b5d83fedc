#!/bin/bash
# Round 43, call 2: build the change (packed batches on the Hopper forward, blocks without a tile leaving at
# once) and f68f361 side by side; the packed and Hopper tests; two A/B rounds (forwards: packed batches on the
# Hopper and the mma.sync forward in one process, dense controls); the change's forward kernels.
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
timeout 100 python3 -m pytest -q -n 8 tests/test_varlen.py tests/test_hopper.py -k "packed or non_finite_rows or gqa_heads_sharing or matches_reference" -p no:cacheprovider -p no:benchmark > $OUT/packed_tests.log 2>&1
echo "packed and Hopper tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/packed_tests.log | tail -8
orders=("head change" "change head")
for round in 1 2; do
  for side in ${orders[$((round-1))]}; do
    echo "=== round $round, $side" | tee -a $OUT/ab.log
    if [[ $side == head ]]; then
      (cd /tmp && PYTHONPATH=/tmp/head timeout 100 python3 $root/.devrun/ab43b.py 2>&1 | grep -v -i warn | tee -a $OUT/ab.log)
    else
      (cd /tmp && timeout 100 python3 $root/.devrun/ab43b.py 2>&1 | grep -v -i warn | tee -a $OUT/ab.log)
    fi
  done
done
echo "=== kernels, change" | tee -a $OUT/kernels.log
(cd /tmp && timeout 100 python3 $root/.devrun/ab43b.py --kernels 2>&1 | grep -v -i warn | tee -a $OUT/kernels.log)
gzip -f $OUT/build*.log
echo "done $((SECONDS-s)) s"
