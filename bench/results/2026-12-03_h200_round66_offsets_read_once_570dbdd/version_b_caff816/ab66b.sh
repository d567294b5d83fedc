#!/bin/bash
# Round 66 B: build, the stored-dS tests, tools/ab_switch.py FIBSPARSE_LEAN_OFFSETS=0 (dk/dv and dq passes with offsets).
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 TORCH_CUDA_ARCH_LIST=9.0a
s=$SECONDS
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"; echo "commit $(cat .devrun/commit)"
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "build rc=$? $((SECONDS-s)) s"
(cd /tmp && timeout 200 python3 -m pytest $OLDPWD/tests/test_kernels.py $OLDPWD/tests/test_varlen.py -k stored -q -x -p no:cacheprovider -p no:benchmark 2>&1 | tail -8 | tee $OUT/tests66b.log)
echo "tests $((SECONDS-s)) s"
(cd /tmp && timeout $((590-SECONDS)) python3 $OLDPWD/tools/ab_switch.py FIBSPARSE_OFFSETS_AHEAD=0 --kernel dkdv --kernel dq_from \
   --config "dense,65536,32,8,128,integer" --config "dense,131072,32,8,128,integer" \
   --config "dense,65536,8,8,64,integer" --config "dense,131072,8,8,64,integer" \
   --config "dense,65536,32,8,128,fractional" --config "packed,65536,32,8,128,integer" \
   --config "dense,65536,32,8,64,integer" --config "dense,65536,8,8,128,integer" 2>&1 | grep -v -i warn | tee $OUT/ab66b.log)
echo "ab rc=$? $((SECONDS-s)) s"
(cd /tmp && timeout $((595-SECONDS)) python3 $OLDPWD/tools/ab_switch.py FIBSPARSE_LEAN_OFFSETS=0 --kernel dkdv --kernel dq_from \
   --config "dense,65536,32,8,128,integer" --config "dense,131072,32,8,128,integer" \
   --config "dense,65536,8,8,64,integer" --config "dense,131072,8,8,64,integer" \
   --config "dense,65536,32,8,128,fractional" 2>&1 | grep -v -i warn | tee $OUT/ab66b_against_old.log)
echo "ab2 rc=$? $((SECONDS-s)) s"
