#!/bin/bash
# Round 65: build, the new tests, tools/ab_switch.py FIBSPARSE_DSCORE_FRAGMENTS=0 (dk/dv and dq passes).
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 TORCH_CUDA_ARCH_LIST=9.0a
s=$SECONDS
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "build rc=$? $((SECONDS-s)) s"
(cd /tmp && timeout 150 python3 -m pytest $OLDPWD/tests/test_dscore_fragments.py -q -x -p no:cacheprovider -p no:benchmark 2>&1 | tail -15 | tee $OUT/tests65.log)
echo "tests $((SECONDS-s)) s"
(cd /tmp && timeout $((590-SECONDS)) python3 $OLDPWD/tools/ab_switch.py FIBSPARSE_DSCORE_FRAGMENTS=0 --kernel dkdv --kernel dq_from \
   --config "dense,65536,8,8,64,window alone" --config "dense,131072,8,8,64,window alone" \
   --config "dense,65536,8,8,64,integer" --config "dense,131072,8,8,64,integer" \
   --config "dense,65536,32,8,128,integer" --config "dense,65536,32,8,128,window alone" \
   --config "dense,65536,32,8,128,fractional" --config "dense,65536,8,8,32,window alone" \
   --config "packed,65536,32,8,128,integer" --config "dense,131072,32,8,128,integer" 2>&1 | grep -v -i warn | tee $OUT/ab65.log)
echo "ab rc=$? $((SECONDS-s)) s"
