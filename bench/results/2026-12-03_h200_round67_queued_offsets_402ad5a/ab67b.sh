#!/bin/bash
# Round 67, again for the forward: FIBSPARSE_OFFSETS_BEFORE_WAIT=0 over 7 rounds a side.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 TORCH_CUDA_ARCH_LIST=9.0a
s=$SECONDS
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"; echo "commit $(cat .devrun/commit)"
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "build rc=$? $((SECONDS-s)) s"
(cd /tmp && timeout $((585-SECONDS)) python3 $OLDPWD/tools/ab_switch.py FIBSPARSE_OFFSETS_BEFORE_WAIT=0 --kernel fwd_hopper --rounds 7 \
   --config "dense,65536,32,8,128,integer" --config "dense,131072,32,8,128,integer" \
   --config "dense,65536,8,8,64,integer" --config "dense,131072,8,8,64,integer" \
   --config "dense,65536,32,8,128,fractional" --config "dense,65536,32,8,64,integer" 2>&1 | grep -v -i warn | tee $OUT/ab67b_fwd.log)
echo "ab fwd rc=$? $((SECONDS-s)) s"
