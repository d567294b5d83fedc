#!/bin/bash
# Three-way A/B: .devrun/main_tree (head), .devrun/v1_tree (version A), the work tree (version B);
# all built here in parallel; rounds rotate the order. Then B's CUDA kernel tests and fuzz cases.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
root=$PWD
rm -rf /tmp/head /tmp/va && cp -r .devrun/main_tree /tmp/head && cp -r .devrun/v1_tree /tmp/va
s=$SECONDS
(cd /tmp/head && MAX_JOBS=5 python3 setup.py build_ext --inplace -q > $OUT/build_head.log 2>&1; echo "head built rc=$? $((SECONDS-s)) s") &
(cd /tmp/va && MAX_JOBS=5 python3 setup.py build_ext --inplace -q > $OUT/build_a.log 2>&1; echo "D(dkdv pairs) built rc=$? $((SECONDS-s)) s") &
MAX_JOBS=6 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build_b.log 2>&1; echo "B built rc=$? $((SECONDS-s)) s  commit $(cat .devrun/commit)+C"
wait
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
orders=("head D C" "C head D" "D C head")
for round in 1 2 3; do
  for side in ${orders[$((round-1))]}; do
    case $side in head) dir=/tmp/head;; D) dir=/tmp/va;; C) dir=$root;; esac
    echo "=== round $round, $side  $(nvidia-smi --query-gpu=clocks.sm,temperature.gpu --format=csv,noheader)" | tee -a $OUT/ab.log
    (cd /tmp && PYTHONPATH=$dir timeout 100 python3 $root/.devrun/ab22.py 2>&1 | tee -a $OUT/ab.log)
  done
done
echo "=== tests (C)"
s=$SECONDS
timeout 150 python3 -m pytest -q -n 8 tests/test_kernels.py tests/test_cuda.py tests/test_varlen.py tests/test_gradcheck.py tests/test_reliability.py -k "cuda" -p no:cacheprovider -p no:benchmark > $OUT/tests.log 2>&1
grep -E "passed|failed|FAILED" $OUT/tests.log | tail -8; echo "tests $((SECONDS-s)) s"
FIBSPARSE_FUZZ_CASES=600 timeout 70 python3 -m pytest -q -n 8 tests/test_fuzz.py -k cuda -p no:cacheprovider -p no:benchmark 2>&1 | tail -2
gzip -f $OUT/tests.log $OUT/build_head.log $OUT/build_a.log $OUT/build_b.log
