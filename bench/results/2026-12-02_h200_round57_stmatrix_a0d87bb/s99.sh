#!/bin/bash
# Round 57, second run: build; ab57 (bitwise + A/B of four epilogues, forward only).
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 TORCH_CUDA_ARCH_LIST=9.0a
root=$PWD; s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
(cd /tmp && timeout 300 python3 $root/.devrun/ab57.py 2>&1 | grep -v -i warn > $OUT/ab57.log; echo "ab57 rc=$? $((SECONDS-s)) s"); cat $OUT/ab57.log
gzip -f $OUT/build.log
echo "done $((SECONDS-s)) s"
