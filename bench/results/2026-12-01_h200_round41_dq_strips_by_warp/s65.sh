#!/bin/bash
# Round 41, second call: build the change and 5df861b (before it) side by side; three A/B
# rounds rotating the builds (fractional positions and an integer control, forward+backward); per-kernel times of both.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
root=$PWD
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit) against 5df861b"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
rm -rf /tmp/head && cp -r .devrun/base /tmp/head
s=$SECONDS
(cd /tmp/head && MAX_JOBS=7 python3 setup.py build_ext --inplace -q > $OUT/build_head.log 2>&1; echo "5df861b built rc=$? $((SECONDS-s)) s") &
MAX_JOBS=9 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "change built rc=$? $((SECONDS-s)) s"
wait
orders=("head change" "change head" "head change")
for round in 1 2 3; do
  for side in ${orders[$((round-1))]}; do
    echo "=== round $round, $side" | tee -a $OUT/ab.log
    if [[ $side == head ]]; then
      (cd /tmp && PYTHONPATH=/tmp/head timeout 90 python3 $root/.devrun/ab41b.py 2>&1 | grep -v -i warn | tee -a $OUT/ab.log)
    else
      (cd /tmp && timeout 90 python3 $root/.devrun/ab41b.py 2>&1 | grep -v -i warn | tee -a $OUT/ab.log)
    fi
  done
done
for side in head change; do
  echo "=== kernels, $side" | tee -a $OUT/kernels.log
  if [[ $side == head ]]; then
    (cd /tmp && PYTHONPATH=/tmp/head timeout 90 python3 $root/.devrun/ab41b.py --kernels 2>&1 | grep -v -i warn | tee -a $OUT/kernels.log)
  else
    (cd /tmp && timeout 90 python3 $root/.devrun/ab41b.py --kernels 2>&1 | grep -v -i warn | tee -a $OUT/kernels.log)
  fi
done
gzip -f $OUT/build*.log
echo "done $((SECONDS-s)) s"
