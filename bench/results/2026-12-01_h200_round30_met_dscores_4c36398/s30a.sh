#!/bin/bash
# Round 30, call A: stage FA4's first wheels for call B; build the head (ad563a6, .devrun/base) and the change in
# parallel; the window alone's tests; three A/B rounds rotating the order; the GPU check's test selection;
# memcheck and racecheck.
cd "$(dirname "$0")/.."
mkdir -p /tmp/fa4 && cp .fa4a/* /tmp/fa4/
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
root=$PWD
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit) against ad563a6"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
python3 -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, "python", sys.version.split()[0])'
rm -rf /tmp/head && cp -r .devrun/base /tmp/head
s=$SECONDS
(cd /tmp/head && MAX_JOBS=7 python3 setup.py build_ext --inplace -q > $OUT/build_head.log 2>&1; echo "head built rc=$? $((SECONDS-s)) s") &
MAX_JOBS=9 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "change built rc=$? $((SECONDS-s)) s"
wait
timeout 90 python3 -m pytest -q -n 8 tests/test_kernels.py -k "window_alone" -p no:cacheprovider -p no:benchmark > $OUT/window_tests.log 2>&1
echo "window tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/window_tests.log | tail -8
orders=("head change" "change head" "head change")
for round in 1 2 3; do
  for side in ${orders[$((round-1))]}; do
    [[ $side == head ]] && dir=/tmp/head || dir=$root
    echo "=== round $round, $side  $(nvidia-smi --query-gpu=clocks.sm,temperature.gpu --format=csv,noheader)" | tee -a $OUT/ab.log
    (cd /tmp && PYTHONPATH=$dir timeout 60 python3 $root/.devrun/ab30.py 2>&1 | tee -a $OUT/ab.log)
  done
done
timeout 240 python3 -m pytest -q -n 8 tests -k "cuda or gradcheck" -p no:cacheprovider -p no:benchmark > $OUT/tests.log 2>&1
echo "tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/tests.log | tail -12
sanitize="compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse"
for tool in memcheck racecheck; do
  timeout 70 $sanitize --tool $tool python3 tools/sanitize_kernels.py > $OUT/$tool.log 2>&1
  echo "=== $tool rc=$? $((SECONDS-s)) s"; tail -2 $OUT/$tool.log
done
gzip -f $OUT/build*.log $OUT/window_tests.log $OUT/tests.log
echo "done $((SECONDS-s)) s"
