#!/bin/bash
# After the review commits: build, the stored-dS tests, each kernel's time.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 TORCH_CUDA_ARCH_LIST=9.0a
s=$SECONDS
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"; echo "commit $(cat .devrun/commit)"
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "build rc=$? $((SECONDS-s)) s"
(cd /tmp && timeout 90 python3 -m pytest $OLDPWD/tests/test_kernels.py $OLDPWD/tests/test_varlen.py -k stored -q -x -p no:cacheprovider -p no:benchmark 2>&1 | tail -2)
echo "tests $((SECONDS-s)) s"
(cd /tmp && timeout 40 python3 $OLDPWD/tools/kernel_times.py 2>&1 | grep -v -i warn | head -40)
echo "done $((SECONDS-s)) s"
