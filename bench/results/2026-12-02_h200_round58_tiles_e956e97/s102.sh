#!/bin/bash
# After round 57: build; the Hopper forward against FIBSPARSE_HOPPER_TILES (tiles58.py).
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 TORCH_CUDA_ARCH_LIST=9.0a
root=$PWD; s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
(cd /tmp && timeout 200 python3 $root/.devrun/tiles58.py 2>&1 | grep -v -i warn | tee $OUT/tiles58.log)
echo "done $((SECONDS-s)) s"
