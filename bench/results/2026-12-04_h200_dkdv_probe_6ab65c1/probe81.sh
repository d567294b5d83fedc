#!/usr/bin/env bash
# The integer dk/dv pass taken apart: loads only (FIBSPARSE_DKDV_PROBE=1) and work only (=2), each against the pass.
set -uo pipefail
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 OMP_NUM_THREADS=2
exec > >(tee "${OUT:-/tmp}/probe.log") 2>&1
digest() { find csrc -type f \( -name '*.cu' -o -name '*.cuh' -o -name '*.h' -o -name '*.cpp' \) | LC_ALL=C sort | xargs sha1sum | sha1sum | cut -c1-12; }
echo "commit: $(cat .devrun/commit)  csrc $(digest)  $(date -u +%Y-%m-%dT%H:%M:%SZ)"
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__)'
s=$SECONDS; python3 -m pip install --no-build-isolation --no-deps -e . -q 2>&1 | tail -3; echo "build $((SECONDS-s)) s"
for probe in 1 2; do
  s=$SECONDS; timeout 100 python3 tools/ab_switch.py FIBSPARSE_DKDV_PROBE=$probe --kernel dkdv --rounds 5 \
    --config dense,65536,32,8,128,integer --config dense,131072,32,8,128,integer \
    --config dense,65536,8,8,64,integer --config dense,131072,8,8,64,integer 2>&1 | grep -v "Warn\|warn_once"; echo "probe $probe $((SECONDS-s)) s"
done
