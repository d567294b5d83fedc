#!/bin/bash
# Fractional against integer offsets at the commit of the GPU check (same build steps as its call A).
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
root=$PWD
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader
s=$SECONDS
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
(cd /tmp && timeout 200 python3 $root/.devrun/ab_frac.py 2>&1 | tee $OUT/frac.log)
echo "done $((SECONDS-s)) s"
