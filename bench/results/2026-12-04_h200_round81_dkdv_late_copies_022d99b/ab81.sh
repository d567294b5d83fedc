#!/usr/bin/env bash
# Round 81 A/B: an offset step of the integer dk/dv pass queues the next step's copies after its products, against
# before its wait (gradients bit for bit); then racecheck, memcheck and synccheck over every kernel, and the CUDA,
# gradcheck and Hopper tests (gpu_check.sh --gpu-tests's selection) on this build.
set -uo pipefail
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 OMP_NUM_THREADS=2
exec > >(tee "${OUT:-/tmp}/ab81.log") 2>&1
digest() { find csrc -type f \( -name '*.cu' -o -name '*.cuh' -o -name '*.h' -o -name '*.cpp' \) | LC_ALL=C sort | xargs sha1sum | sha1sum | cut -c1-12; }
echo "commit: $(cat .devrun/commit)  csrc $(digest)  $(date -u +%Y-%m-%dT%H:%M:%SZ)"
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__)'
s=$SECONDS; python3 -m pip install --no-build-isolation --no-deps -e . -q 2>&1 | tail -3; echo "build $((SECONDS-s)) s"
s=$SECONDS; timeout 100 python3 tools/ab_switch.py FIBSPARSE_DKDV_LATE_ISSUE=0 --kernel dkdv --rounds 7 \
  --config dense,65536,32,8,128,integer --config dense,131072,32,8,128,integer \
  --config packed,65536,32,8,128,integer --config dense,65536,8,8,64,integer \
  --config dense,131072,8,8,64,integer 2>&1 | grep -v "Warn\|warn_once\|timed kernels"; echo "ab $((SECONDS-s)) s"
for tool in racecheck memcheck synccheck; do
  s=$SECONDS; timeout 80 compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse --tool $tool python3 tools/sanitize_kernels.py 2>&1 | tail -2; echo "$tool rc=${PIPESTATUS[0]} $((SECONDS-s)) s"
done
s=$SECONDS; timeout 300 python3 -m pytest tests -q -n 8 -k "cuda or gradcheck or hopper" -p no:cacheprovider -p no:benchmark 2>&1 | tail -2; echo "gpu tests rc=${PIPESTATUS[0]} $((SECONDS-s)) s"
