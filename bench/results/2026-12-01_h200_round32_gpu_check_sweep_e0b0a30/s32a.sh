#!/bin/bash
# Round 32, call A: stage FA4's first wheels; build the change and a29cfc0 (before round 31) in parallel; the
# route tests; three A/B rounds rotating the builds (the change: general passes and stored dS; a29cfc0: its
# default routes); per-kernel times.
cd "$(dirname "$0")/.."
mkdir -p /tmp/fa4 && cp .fa4a/* /tmp/fa4/
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
root=$PWD
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit) against a29cfc0"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
python3 -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, "python", sys.version.split()[0])'
rm -rf /tmp/head && cp -r .devrun/base /tmp/head
s=$SECONDS
(cd /tmp/head && MAX_JOBS=7 python3 setup.py build_ext --inplace -q > $OUT/build_head.log 2>&1; echo "a29cfc0 built rc=$? $((SECONDS-s)) s") &
MAX_JOBS=9 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "change built rc=$? $((SECONDS-s)) s"
wait
timeout 150 python3 -m pytest -q -n 8 tests/test_kernels.py -k "stored_dscores or window_alone or gqa_heads_sharing" -p no:cacheprovider -p no:benchmark > $OUT/route_tests.log 2>&1
echo "route tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/route_tests.log | tail -12
orders=("head change" "change head" "head change")
for round in 1 2 3; do
  for side in ${orders[$((round-1))]}; do
    echo "=== round $round, $side  $(nvidia-smi --query-gpu=clocks.sm,temperature.gpu --format=csv,noheader)" | tee -a $OUT/ab.log
    if [[ $side == head ]]; then
      (cd /tmp && AB_ROUTES=stored PYTHONPATH=/tmp/head timeout 100 python3 $root/.devrun/ab31.py $round 2>&1 | tee -a $OUT/ab.log)
    else
      (cd /tmp && timeout 100 python3 $root/.devrun/ab31.py $round 2>&1 | tee -a $OUT/ab.log)
    fi
  done
done
(cd /tmp && timeout 60 python3 $root/.devrun/ab31.py --kernels 2>&1 | grep -v "UserWarning\|_warn_once" | tee $OUT/kernels.log)
gzip -f $OUT/build*.log $OUT/route_tests.log
echo "done $((SECONDS-s)) s"
