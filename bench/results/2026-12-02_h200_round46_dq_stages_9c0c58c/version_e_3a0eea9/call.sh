#!/bin/bash
# Round 46 version E: build it and 4dd3f4f side by side; the stored-dS, packed, kernel and gradcheck tests; memcheck,
# racecheck and synccheck; each build's kernel times (ab46.py --kernels).
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 TORCH_CUDA_ARCH_LIST=9.0a
root=$PWD
s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit) against 4dd3f4f"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
python3 -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, "python", sys.version.split()[0])'
rm -rf /tmp/head && cp -r .devrun/base46 /tmp/head
(cd /tmp/head && MAX_JOBS=6 python3 setup.py build_ext --inplace -q > $OUT/build_head.log 2>&1; echo "4dd3f4f built rc=$? $((SECONDS-s)) s") &
MAX_JOBS=10 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "change built rc=$? $((SECONDS-s)) s"
timeout 90 python3 -m pytest -q -n 8 tests/test_varlen.py tests/test_kernels.py tests/test_gradcheck.py -k "cuda or gradcheck" -p no:cacheprovider -p no:benchmark > $OUT/tests.log 2>&1
echo "tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/tests.log | tail -8
for tool in memcheck racecheck synccheck; do
  timeout 80 compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse --tool $tool python3 tools/sanitize_kernels.py > $OUT/$tool.log 2>&1; echo "$tool rc=$? $((SECONDS-s)) s"; tail -1 $OUT/$tool.log
done
wait
for side in change head; do
  [[ $((SECONDS-s)) -gt 290 ]] && break
  case $side in head) pp=/tmp/head;; change) pp=$root;; esac
  echo "=== kernels, $side" | tee -a $OUT/kernels.log
  (cd /tmp && PYTHONPATH=$pp timeout 35 python3 $root/.devrun/ab46.py --kernels 2>&1 | grep -v -i warn | tee -a $OUT/kernels.log)
done
gzip -f $OUT/build*.log $OUT/tests.log
echo "done $((SECONDS-s)) s"
