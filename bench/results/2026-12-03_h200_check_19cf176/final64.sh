#!/bin/bash
# The final commit's GPU tests, then the walk against one tile a block after the stage_window_stats mend.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 TORCH_CUDA_ARCH_LIST=9.0a
s=$SECONDS
FIBSPARSE_COMMIT=$(cat .devrun/commit) MAX_JOBS=16 bash tools/gpu_check.sh --gpu-tests > $OUT/gpu_check_gpu_tests.log 2>&1
echo "gpu_check rc=$? $((SECONDS-s)) s"; grep -A30 "=== summary" $OUT/gpu_check_gpu_tests.log; grep -E "passed|failed" $OUT/gpu_check_gpu_tests.log | tail -3
(cd /tmp && timeout $((585-SECONDS)) python3 $OLDPWD/tools/ab_switch.py FIBSPARSE_WINDOW_WALK=0 --kernel dkdv \
   --config "dense,65536,8,8,32,window alone" --config "dense,65536,8,8,16,window alone" 2>&1 | grep -v -i warn | tee $OUT/ab_walk.log)
echo "ab rc=$? $((SECONDS-s)) s"
