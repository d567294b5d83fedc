#!/bin/bash
# Round 55: build; ab55 (bitwise + A/B); the GPU check's test selection with the TMA-stored output (the default).
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 TORCH_CUDA_ARCH_LIST=9.0a
root=$PWD; s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
(cd /tmp && timeout 200 python3 $root/.devrun/ab55.py 2>&1 | grep -v -i warn > $OUT/ab55.log; echo "ab55 rc=$? $((SECONDS-s)) s"); cat $OUT/ab55.log
timeout 240 python3 -m pytest -q -n 8 tests -k "cuda or gradcheck or hopper" -p no:cacheprovider -p no:benchmark > $OUT/gpu_tests_exp55.log 2>&1
echo "gpu tests (TMA-stored output) rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/gpu_tests_exp55.log | tail -8
gzip -f $OUT/build.log $OUT/gpu_tests_exp55.log
echo "done $((SECONDS-s)) s"
