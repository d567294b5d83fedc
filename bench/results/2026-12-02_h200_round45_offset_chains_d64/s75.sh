#!/bin/bash
# Round 45: build the change (the dk/dv pass's integer offset products in two chains at head_dim 64) and
# 1ae9046 side by side; the stored-dS, packed and GQA tests; three A/B rounds of ab45.py (forward+backward where
# the changed kernel runs, a head_dim 128 control), rotated between the builds; both builds' kernels.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
root=$PWD
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit) against 1ae9046"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
python3 -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, "python", sys.version.split()[0])'
rm -rf /tmp/head && cp -r .devrun/base45 /tmp/head
s=$SECONDS
(cd /tmp/head && MAX_JOBS=8 python3 setup.py build_ext --inplace -q > $OUT/build_head.log 2>&1; echo "1ae9046 built rc=$? $((SECONDS-s)) s") &
MAX_JOBS=8 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "change built rc=$? $((SECONDS-s)) s"
wait
timeout 170 python3 -m pytest -q -n 8 tests/test_kernels.py tests/test_varlen.py -k "cuda and (stored or packed or gqa or dense_call)" -p no:cacheprovider -p no:benchmark > $OUT/stored_tests.log 2>&1
echo "stored-dS, packed and GQA tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/stored_tests.log | tail -12
orders=("head change" "change head" "head change")
for round in 1 2 3; do
  for side in ${orders[$((round-1))]}; do
    echo "=== round $round, $side" | tee -a $OUT/ab.log
    if [[ $side == head ]]; then
      (cd /tmp && PYTHONPATH=/tmp/head timeout 120 python3 $root/.devrun/ab45.py 2>&1 | grep -v -i warn | tee -a $OUT/ab.log)
    else
      (cd /tmp && timeout 120 python3 $root/.devrun/ab45.py 2>&1 | grep -v -i warn | tee -a $OUT/ab.log)
    fi
  done
done
echo "=== kernels, change" | tee -a $OUT/kernels.log
(cd /tmp && timeout 100 python3 $root/.devrun/ab45.py --kernels 2>&1 | grep -v -i warn | tee -a $OUT/kernels.log)
echo "=== kernels, 1ae9046" | tee -a $OUT/kernels.log
(cd /tmp && PYTHONPATH=/tmp/head timeout 100 python3 $root/.devrun/ab45.py --kernels 2>&1 | grep -v -i warn | tee -a $OUT/kernels.log)
gzip -f $OUT/build*.log
echo "done $((SECONDS-s)) s"
