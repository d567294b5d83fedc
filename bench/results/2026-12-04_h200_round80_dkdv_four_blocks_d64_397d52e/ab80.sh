#!/usr/bin/env bash
# Round 80 A/B: the integer dk/dv pass at head_dim 64 with four blocks an SM against three (gradients bit for bit),
# then racecheck and memcheck over every kernel, and the CUDA tests of integer offsets on the stored-dS route.
set -uo pipefail
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 OMP_NUM_THREADS=2
exec > >(tee "${OUT:-/tmp}/ab80.log") 2>&1
digest() { find csrc -type f \( -name '*.cu' -o -name '*.cuh' -o -name '*.h' -o -name '*.cpp' \) | LC_ALL=C sort | xargs sha1sum | sha1sum | cut -c1-12; }
echo "commit: $(cat .devrun/commit)  csrc $(digest)  $(date -u +%Y-%m-%dT%H:%M:%SZ)"
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__)'
s=$SECONDS; python3 -m pip install --no-build-isolation --no-deps -e . -q 2>&1 | tail -3; echo "build $((SECONDS-s)) s"
s=$SECONDS; timeout 100 python3 tools/ab_switch.py FIBSPARSE_DKDV_FOUR_BLOCKS=0 --kernel dkdv --rounds 7 \
  --config dense,65536,8,8,64,integer --config dense,131072,8,8,64,integer \
  --config dense,65536,32,8,64,integer 2>&1 | grep -v "Warn\|warn_once"; echo "ab $((SECONDS-s)) s"
for tool in racecheck memcheck; do
  s=$SECONDS; timeout 80 compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse --tool $tool python3 tools/sanitize_kernels.py 2>&1 | tail -3; echo "$tool rc=${PIPESTATUS[0]} $((SECONDS-s)) s"
done
s=$SECONDS; timeout 90 python3 -m pytest tests/test_kernels.py tests/test_varlen.py -q -n 8 -k "cuda and not fractional" -p no:cacheprovider -p no:benchmark 2>&1 | tail -2; echo "tests $((SECONDS-s)) s"
