#!/usr/bin/env bash
# Round 74 A/B: build the A/B commit, the stored dq pass's tree sum against its shuffles (gradients compared bit
# for bit); then the landed commit's csrc (the switch removed: landed74.patch), rebuilt, its tests and kernel times.
set -uo pipefail
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 OMP_NUM_THREADS=2
exec > >(tee "${OUT:-/tmp}/ab74.log") 2>&1
echo "commit: $(cat .devrun/commit)  $(date -u +%Y-%m-%dT%H:%M:%SZ)"
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__)'
s=$SECONDS; python3 -m pip install --no-build-isolation --no-deps -e . -q 2>&1 | tail -3; echo "build $((SECONDS-s)) s"
s=$SECONDS; timeout 150 python3 tools/ab_switch.py FIBSPARSE_DPOS_TREE=0 --kernel dq_from_dscores --kernel dkdv --rounds 7 \
  --config dense,65536,32,8,128,fractional --config packed,65536,32,8,128,fractional \
  --config dense,131072,32,8,128,fractional --config dense,65536,8,8,128,fractional; echo "ab $((SECONDS-s)) s"
git apply .devrun/landed74.patch && echo "landed: $(cat .devrun/landed_commit), csrc $(find csrc -type f | sort | xargs sha1sum | sha1sum)"
s=$SECONDS; python3 -m pip install --no-build-isolation --no-deps -e . -q 2>&1 | tail -3; echo "build $((SECONDS-s)) s"
s=$SECONDS; timeout 100 python3 -m pytest tests/test_kernels.py tests/test_varlen.py -q -n 8 -k "cuda and (stored or fractional)" -p no:cacheprovider -p no:benchmark 2>&1 | tail -3; echo "tests $((SECONDS-s)) s"
s=$SECONDS; timeout 40 python3 tools/kernel_times.py 2>&1 | grep -v Warn | sed -n 1,40p; echo "kernel times $((SECONDS-s)) s"
git apply -R .devrun/landed74.patch
