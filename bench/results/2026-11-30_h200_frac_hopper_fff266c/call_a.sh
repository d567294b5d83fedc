#!/bin/bash
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 OMP_NUM_THREADS=2
mkdir -p /tmp/fa4 && cp .fa4a/* /tmp/fa4/
s=$SECONDS; python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1 || { tail -40 $OUT/build.log; exit 1; }
echo "build $((SECONDS-s)) s  commit $(cat .devrun/commit)"
timeout 120 python3 .devrun/frac_kernels.py 2>&1 | tee $OUT/frac_kernels.log
