#!/bin/bash
# Round 46 version C and the packed route on total_q == total_k: build 4dd3f4f and the change side by side; the GPU
# check's test selection; memcheck, racecheck and synccheck; each build's kernel times (ab46.py --kernels); two
# rounds of ab46.py rotated between the builds.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
root=$PWD
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit) against 4dd3f4f"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
python3 -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, "python", sys.version.split()[0])'
rm -rf /tmp/head && cp -r .devrun/base46 /tmp/head
s=$SECONDS
(cd /tmp/head && MAX_JOBS=8 python3 setup.py build_ext --inplace -q > $OUT/build_head.log 2>&1; echo "4dd3f4f built rc=$? $((SECONDS-s)) s") &
MAX_JOBS=8 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "change built rc=$? $((SECONDS-s)) s"
wait
timeout 200 python3 -m pytest -q -n 8 tests -k "cuda or gradcheck or hopper" -p no:cacheprovider -p no:benchmark > $OUT/gpu_tests.log 2>&1
echo "GPU tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/gpu_tests.log | tail -8; gzip -f $OUT/gpu_tests.log
for tool in memcheck racecheck synccheck; do
  timeout 100 compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse --tool $tool python3 tools/sanitize_kernels.py > $OUT/$tool.log 2>&1; echo "$tool rc=$? $((SECONDS-s)) s"; tail -1 $OUT/$tool.log
done
run() {  # build, args
  case $1 in head) pp=/tmp/head;; change) pp=$root;; esac
  (cd /tmp && PYTHONPATH=$pp timeout 100 python3 $root/.devrun/ab46.py $2 2>&1 | grep -v -i warn)
}
for side in head change; do echo "=== kernels, $side" | tee -a $OUT/kernels.log; run $side --kernels | tee -a $OUT/kernels.log; done
echo "kernels $((SECONDS-s)) s"
orders=("change head" "head change")
for round in 1 2; do
  for side in ${orders[$((round-1))]}; do
    [[ $((SECONDS-s)) -gt 520 ]] && break 2
    echo "=== round $round, $side" | tee -a $OUT/ab.log; run $side | tee -a $OUT/ab.log
  done
done
gzip -f $OUT/build*.log
echo "done $((SECONDS-s)) s"
