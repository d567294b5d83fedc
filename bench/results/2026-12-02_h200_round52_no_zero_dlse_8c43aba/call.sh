#!/bin/bash
# Round 52: build (autograd.cpp changed, kernels not); the GPU check's test selection; the A/B; memcheck while time lasts.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 TORCH_CUDA_ARCH_LIST=9.0a
root=$PWD; s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
timeout 230 python3 -m pytest -q -n 8 tests -k "cuda or gradcheck or hopper" -p no:cacheprovider -p no:benchmark > $OUT/gpu_tests.log 2>&1
echo "gpu tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/gpu_tests.log | tail -5
(cd /tmp && timeout 90 python3 $root/.devrun/ab52.py 2>&1 | grep -v -i warn > $OUT/ab52.log; echo "ab52 rc=$? $((SECONDS-s)) s"); cat $OUT/ab52.log
left=$((480 - SECONDS + s)); if [ $left -gt 30 ]; then
  timeout $left compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse --tool memcheck python3 tools/sanitize_kernels.py > $OUT/memcheck.log 2>&1; echo "memcheck rc=$? $((SECONDS-s)) s"; tail -1 $OUT/memcheck.log
fi
gzip -f $OUT/build.log $OUT/gpu_tests.log
echo "done $((SECONDS-s)) s"
