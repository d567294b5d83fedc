#!/bin/bash
# Round 62's A/B call (as round 61's): build, the new tests, then tools/ab_switch.py; the backward tests on the build.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 TORCH_CUDA_ARCH_LIST=9.0a
s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
timeout 150 python3 -m pytest -q -n 8 tests/test_hopper_backward.py -p no:cacheprovider > $OUT/tests_new.log 2>&1
echo "new tests rc=$? $((SECONDS-s)) s"; tail -15 $OUT/tests_new.log
(cd /tmp && timeout 330 python3 $OLDPWD/tools/ab_switch.py FIBSPARSE_DKDV_TMA=0 --kernel dkdv \
   --config dense,65536,32,8,128,integer --config dense,131072,32,8,128,integer \
   --config dense,65536,8,8,64,integer --config dense,131072,8,8,64,integer --config dense,65536,32,8,64,integer 2>&1 | grep -v -i warn | tee $OUT/ab61.log)
echo "ab rc=$? $((SECONDS-s)) s"
timeout 100 python3 -m pytest -q -n 8 tests/test_kernels.py tests/test_cuda.py -k cuda -p no:cacheprovider -p no:benchmark > $OUT/tests.log 2>&1
echo "tests rc=$? $((SECONDS-s)) s"; tail -3 $OUT/tests.log
gzip -f $OUT/build.log
