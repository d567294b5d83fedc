#!/bin/bash
# Round 46: build HEAD (4dd3f4f), version A (the dq pass's strips copied without row checks where they lie inside)
# and version B (A + three stages, one barrier a step) side by side; the stored-dS and packed tests on B;
# ab46.py rotated over the three builds, two rounds; each build's kernel times.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
root=$PWD
echo "=== $(date -u +%FT%TZ) B = working tree, A = .devrun/a46, head = .devrun/base46 (4dd3f4f)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
python3 -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, "python", sys.version.split()[0])'
rm -rf /tmp/head /tmp/a && cp -r .devrun/base46 /tmp/head && cp -r .devrun/a46 /tmp/a
s=$SECONDS
(cd /tmp/head && MAX_JOBS=5 python3 setup.py build_ext --inplace -q > $OUT/build_head.log 2>&1; echo "head built rc=$? $((SECONDS-s)) s") &
(cd /tmp/a && MAX_JOBS=5 python3 setup.py build_ext --inplace -q > $OUT/build_a.log 2>&1; echo "A built rc=$? $((SECONDS-s)) s") &
MAX_JOBS=6 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "B built rc=$? $((SECONDS-s)) s"
wait
timeout 120 python3 -m pytest -q -n 8 tests/test_varlen.py tests/test_kernels.py tests/test_gradcheck.py -k "cuda or gradcheck" -p no:cacheprovider -p no:benchmark > $OUT/tests_b.log 2>&1
echo "B's varlen, kernel and gradcheck tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/tests_b.log | tail -12
run() {  # build, args
  case $1 in head) pp=/tmp/head;; A) pp=/tmp/a;; B) pp=$root;; esac
  (cd /tmp && PYTHONPATH=$pp timeout 150 python3 $root/.devrun/ab46.py $2 2>&1 | grep -v -i warn)
}
orders=("head A B" "B A head")
for round in 1 2; do
  for side in ${orders[$((round-1))]}; do
    echo "=== round $round, $side" | tee -a $OUT/ab.log; run $side | tee -a $OUT/ab.log
  done
done
for side in head B; do echo "=== kernels, $side" | tee -a $OUT/kernels.log; run $side --kernels | tee -a $OUT/kernels.log; done
gzip -f $OUT/build*.log
echo "done $((SECONDS-s)) s"
