#!/bin/bash
# Round 70: build, the stored-dS tests, then FIBSPARSE_UNCHECKED_STRIPS=0 (the dk/dv pass), 7 rounds a side.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 TORCH_CUDA_ARCH_LIST=9.0a
s=$SECONDS
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"; echo "commit $(cat .devrun/commit)"
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "build rc=$? $((SECONDS-s)) s"
(cd /tmp && timeout 150 python3 -m pytest $OLDPWD/tests/test_kernels.py $OLDPWD/tests/test_varlen.py -k "stored or offsets or gqa" -q -p no:cacheprovider -p no:benchmark 2>&1 | tail -4 | tee $OUT/tests70.log)
echo "tests $((SECONDS-s)) s"
CONFIGS=(--config "dense,65536,32,8,128,integer" --config "dense,131072,32,8,128,integer" \
   --config "dense,65536,8,8,64,integer" --config "dense,131072,8,8,64,integer" \
   --config "packed,65536,32,8,128,integer" --config "dense,65536,32,8,64,integer" --config "dense,65536,8,8,128,integer")
(cd /tmp && timeout $((585-SECONDS)) python3 $OLDPWD/tools/ab_switch.py FIBSPARSE_UNCHECKED_STRIPS=0 --kernel dkdv --rounds 7 "${CONFIGS[@]}" --config "dense,65536,32,8,128,fractional" 2>&1 | grep -v -i warn | tee $OUT/ab70_strips.log)
echo "ab strips rc=$? $((SECONDS-s)) s"
