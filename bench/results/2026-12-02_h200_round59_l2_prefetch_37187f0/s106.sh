#!/bin/bash
# Round 59's A/B call: build, then ab59.py; the Hopper and backward tests on the build.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 TORCH_CUDA_ARCH_LIST=9.0a
s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
(cd /tmp && timeout 300 python3 $OLDPWD/.devrun/ab59.py 2>&1 | grep -v -i warn | tee $OUT/ab59.log)
echo "ab rc=$? $((SECONDS-s)) s"
timeout 150 python3 -m pytest -q -n 8 tests/test_kernels.py tests/test_cuda.py -k cuda -p no:cacheprovider -p no:benchmark > $OUT/tests.log 2>&1
echo "tests rc=$? $((SECONDS-s)) s"; tail -3 $OUT/tests.log
gzip -f $OUT/build.log
