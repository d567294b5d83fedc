#!/bin/bash
# Round 42: build the change and f30a74d (before it) side by side; three A/B
# rounds rotating the builds (fractional positions and an integer control, forward+backward); per-kernel times of both.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
root=$PWD
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit) against f30a74d"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
rm -rf /tmp/head && cp -r .devrun/base41 /tmp/head
s=$SECONDS
(cd /tmp/head && MAX_JOBS=7 python3 setup.py build_ext --inplace -q > $OUT/build_head.log 2>&1; echo "f30a74d built rc=$? $((SECONDS-s)) s") &
MAX_JOBS=9 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "change built rc=$? $((SECONDS-s)) s"
wait
timeout 230 python3 -m pytest -q -n 8 tests -k "cuda or gradcheck or hopper" -p no:cacheprovider -p no:benchmark > $OUT/gpu_tests.log 2>&1
echo "GPU tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED" $OUT/gpu_tests.log | tail -8; gzip -f $OUT/gpu_tests.log
orders=("head change" "change head" "head change")
for round in 1 2 3; do
  for side in ${orders[$((round-1))]}; do
    echo "=== round $round, $side" | tee -a $OUT/ab.log
    if [[ $side == head ]]; then
      (cd /tmp && PYTHONPATH=/tmp/head timeout 90 python3 $root/.devrun/ab41.py 2>&1 | grep -v -i warn | tee -a $OUT/ab.log)
    else
      (cd /tmp && timeout 90 python3 $root/.devrun/ab41.py 2>&1 | grep -v -i warn | tee -a $OUT/ab.log)
    fi
  done
done
for side in head change; do
  echo "=== kernels, $side" | tee -a $OUT/kernels.log
  if [[ $side == head ]]; then
    (cd /tmp && PYTHONPATH=/tmp/head timeout 90 python3 $root/.devrun/ab41.py --kernels 2>&1 | grep -v -i warn | tee -a $OUT/kernels.log)
  else
    (cd /tmp && timeout 90 python3 $root/.devrun/ab41.py --kernels 2>&1 | grep -v -i warn | tee -a $OUT/kernels.log)
  fi
done
for tool in memcheck racecheck synccheck; do
  timeout 90 compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse --tool $tool python3 tools/sanitize_kernels.py > $OUT/$tool.log 2>&1; echo "$tool rc=$? $((SECONDS-s)) s"; tail -1 $OUT/$tool.log
done
gzip -f $OUT/build*.log
echo "done $((SECONDS-s)) s"
