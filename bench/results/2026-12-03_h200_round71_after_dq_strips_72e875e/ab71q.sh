#!/bin/bash
# Round 71, short: build, then the two A/Bs (ab_switch checks the gradients bitwise), 7 rounds a side.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 TORCH_CUDA_ARCH_LIST=9.0a
s=$SECONDS
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; echo "commit $(cat .devrun/commit)"
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "build rc=$? $((SECONDS-s)) s"
(cd /tmp && timeout $((250-SECONDS)) python3 $OLDPWD/tools/ab_switch.py FIBSPARSE_UNCHECKED_AFTER_DQ=0 --kernel dkdv --rounds 7 \
   --config "dense,65536,8,8,64,fractional" --config "dense,65536,32,8,64,fractional" --config "packed,65536,32,8,64,fractional" 2>&1 | grep -v -i warn | tee $OUT/ab71_after_dq.log)
echo "ab after-dq rc=$? $((SECONDS-s)) s"
(cd /tmp && timeout $((310-SECONDS)) python3 $OLDPWD/tools/ab_switch.py FIBSPARSE_HOISTED_STAGE=0 --kernel dkdv --rounds 7 \
   --config "dense,65536,32,8,128,integer" --config "dense,131072,8,8,64,integer" --config "dense,65536,32,8,64,integer" 2>&1 | grep -v -i warn | tee $OUT/ab71_hoisted.log)
echo "ab hoisted rc=$? $((SECONDS-s)) s"
