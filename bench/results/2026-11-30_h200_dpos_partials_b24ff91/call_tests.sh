#!/bin/bash
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 OMP_NUM_THREADS=2
echo "commit $(cat .devrun/commit)"; nvidia-smi --query-gpu=name --format=csv,noheader
s=$SECONDS; python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1 || { tail -20 $OUT/build.log; exit 1; }
echo "build $((SECONDS-s)) s"
timeout 100 python3 -m pytest -q -n 8 tests/test_kernels.py -k "cuda or per_head_sum" -p no:cacheprovider -p no:benchmark 2>&1 | tail -3 | tee $OUT/tests.log
