#!/bin/bash
# Round 31, call A: build; the stored-dS and window-alone tests; three A/B rounds (general passes against stored
# dS, one build); per-kernel times of both routes.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
python3 -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, "python", sys.version.split()[0])'
s=$SECONDS; root=$PWD
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
timeout 150 python3 -m pytest -q -n 8 tests/test_kernels.py -k "stored_dscores or window_alone or gqa_heads_sharing" -p no:cacheprovider -p no:benchmark > $OUT/route_tests.log 2>&1
echo "route tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/route_tests.log | tail -12
for round in 1 2 3; do
  echo "=== round $round  $(nvidia-smi --query-gpu=clocks.sm,temperature.gpu --format=csv,noheader)" | tee -a $OUT/ab.log
  (cd /tmp && timeout 100 python3 $root/.devrun/ab31.py $round 2>&1 | tee -a $OUT/ab.log)
done
(cd /tmp && timeout 60 python3 $root/.devrun/ab31.py --kernels 2>&1 | tee $OUT/kernels.log)
gzip -f $OUT/build.log $OUT/route_tests.log
echo "done $((SECONDS-s)) s"
