#!/bin/bash
# Round 67: build, the Hopper forward's and the stored-dS tests, then two A/Bs:
# FIBSPARSE_OFFSETS_BEFORE_WAIT=0 (the forward) and FIBSPARSE_DQ_QUEUED_OFFSETS=0 (the fractional dq pass).
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 TORCH_CUDA_ARCH_LIST=9.0a
s=$SECONDS
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"; echo "commit $(cat .devrun/commit)"
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "build rc=$? $((SECONDS-s)) s"
(cd /tmp && timeout 150 python3 -m pytest $OLDPWD/tests/test_hopper.py $OLDPWD/tests/test_kernels.py $OLDPWD/tests/test_varlen.py -k "(stored or hopper) and not ptxas" -q -x -p no:cacheprovider -p no:benchmark 2>&1 | tail -4 | tee $OUT/tests67.log)
echo "tests $((SECONDS-s)) s"
(cd /tmp && timeout $((400-SECONDS)) python3 $OLDPWD/tools/ab_switch.py FIBSPARSE_OFFSETS_BEFORE_WAIT=0 --kernel fwd_hopper \
   --config "dense,65536,32,8,128,integer" --config "dense,131072,32,8,128,integer" \
   --config "dense,65536,8,8,64,integer" --config "dense,131072,8,8,64,integer" \
   --config "dense,65536,32,8,128,fractional" --config "dense,65536,32,8,64,integer" \
   --config "dense,65536,8,8,128,integer" 2>&1 | grep -v -i warn | tee $OUT/ab67_fwd.log)
echo "ab fwd rc=$? $((SECONDS-s)) s"
(cd /tmp && timeout $((585-SECONDS)) python3 $OLDPWD/tools/ab_switch.py FIBSPARSE_DQ_QUEUED_OFFSETS=0 --kernel dq_from \
   --config "dense,65536,32,8,128,fractional" --config "dense,131072,32,8,128,fractional" \
   --config "dense,65536,8,8,128,fractional" 2>&1 | grep -v -i warn | tee $OUT/ab67_dq.log)
echo "ab dq rc=$? $((SECONDS-s)) s"
