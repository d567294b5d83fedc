#!/bin/bash
# Round 44, call 1: build the change (stored dS for packed batches whose q and k share one cu_seqlens tensor) and
# d814510 side by side; the packed and stored-dS tests; two A/B rounds of ab44.py (packed batches with stored dS
# and on the general passes in one process, dense controls), rotated between the builds; the change's kernels.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
root=$PWD
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit) against d814510"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
python3 -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, "python", sys.version.split()[0])'
rm -rf /tmp/head && cp -r .devrun/base44 /tmp/head
s=$SECONDS
(cd /tmp/head && MAX_JOBS=8 python3 setup.py build_ext --inplace -q > $OUT/build_head.log 2>&1; echo "d814510 built rc=$? $((SECONDS-s)) s") &
MAX_JOBS=8 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "change built rc=$? $((SECONDS-s)) s"
wait
timeout 170 python3 -m pytest -q -n 8 tests/test_varlen.py tests/test_kernels.py -k "cuda and (varlen or packed or stored or dense_call or sequence or written or lengths or gqa)" -p no:cacheprovider -p no:benchmark > $OUT/packed_tests.log 2>&1
echo "packed and stored-dS tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/packed_tests.log | tail -12
orders=("head change" "change head")
for round in 1 2; do
  for side in ${orders[$((round-1))]}; do
    echo "=== round $round, $side" | tee -a $OUT/ab.log
    if [[ $side == head ]]; then
      (cd /tmp && PYTHONPATH=/tmp/head timeout 120 python3 $root/.devrun/ab44.py 2>&1 | grep -v -i warn | tee -a $OUT/ab.log)
    else
      (cd /tmp && timeout 120 python3 $root/.devrun/ab44.py 2>&1 | grep -v -i warn | tee -a $OUT/ab.log)
    fi
  done
done
echo "=== kernels, change" | tee -a $OUT/kernels.log
(cd /tmp && timeout 100 python3 $root/.devrun/ab44.py --kernels 2>&1 | grep -v -i warn | tee -a $OUT/kernels.log)
gzip -f $OUT/build*.log
echo "done $((SECONDS-s)) s"
