#!/bin/bash
# Round 64: build, the new tests, tools/ab_switch.py FIBSPARSE_DQ_TILE_PAIRS=0, then the GPU tests.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 TORCH_CUDA_ARCH_LIST=9.0a
s=$SECONDS
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "build rc=$? $((SECONDS-s)) s"
(cd /tmp && timeout 90 python3 -m pytest $OLDPWD/tests/test_dq_tile_pairs.py -q -p no:cacheprovider -p no:benchmark 2>&1 | tail -15 | tee $OUT/tests64.log)
echo "tests $((SECONDS-s)) s"
(cd /tmp && timeout 200 python3 $OLDPWD/tools/ab_switch.py FIBSPARSE_DQ_TILE_PAIRS=0 --kernel dq_from \
   --config "dense,65536,8,8,64,window alone" --config "dense,131072,8,8,64,window alone" \
   --config "dense,65536,32,8,64,window alone" --config "dense,65536,8,8,32,window alone" \
   --config "packed,65536,8,8,64,window alone" --config "dense,16384,8,8,64,window alone" 2>&1 | grep -v -i warn | tee $OUT/ab64.log)
echo "ab rc=$? $((SECONDS-s)) s"
FIBSPARSE_COMMIT=$(cat .devrun/commit) MAX_JOBS=16 timeout $((590-SECONDS)) bash tools/gpu_check.sh --gpu-tests > $OUT/gpu_check_gpu_tests.log 2>&1
echo "gpu_check rc=$? $((SECONDS-s)) s"; grep -A30 "=== summary" $OUT/gpu_check_gpu_tests.log; grep -E "passed|failed" $OUT/gpu_check_gpu_tests.log | tail -3
