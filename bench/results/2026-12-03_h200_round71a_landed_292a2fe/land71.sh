#!/bin/bash
# Round 71 (a) without its switch: build, the CUDA tests of the offset routes, then memcheck.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 TORCH_CUDA_ARCH_LIST=9.0a
s=$SECONDS
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; echo "commit $(cat .devrun/commit)"
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "build rc=$? $((SECONDS-s)) s"
(cd /tmp && timeout $((128-SECONDS)) python3 -m pytest $OLDPWD/tests/test_kernels.py $OLDPWD/tests/test_varlen.py -n 8 -k "cuda and (fractional or offsets or general or gqa)" -q -p no:cacheprovider -p no:benchmark 2>&1 | tail -3 | tee $OUT/tests71a.log)
echo "tests rc=${PIPESTATUS[0]} $((SECONDS-s)) s"
timeout $((165-SECONDS)) compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse --tool memcheck python3 tools/sanitize_kernels.py 2>&1 | tail -3 | tee $OUT/memcheck71a.log
echo "memcheck rc=${PIPESTATUS[0]} $((SECONDS-s)) s"
