#!/usr/bin/env bash
# Round 75 A/B: one build of main; four 64-query spans a block (FIBSPARSE_HOPPER_TILES=8: two 32-query tiles a
# span where two heads share a warpgroup) against the rule's count, fractional positions; then two spans at 16k.
set -uo pipefail
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 OMP_NUM_THREADS=2
exec > >(tee "${OUT:-/tmp}/ab75.log") 2>&1
echo "commit: $(cat .devrun/commit)  $(date -u +%Y-%m-%dT%H:%M:%SZ)"
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__)'
s=$SECONDS; python3 -m pip install --no-build-isolation --no-deps -e . -q 2>&1 | tail -3; echo "build $((SECONDS-s)) s"
s=$SECONDS; timeout 200 python3 tools/ab_switch.py FIBSPARSE_HOPPER_TILES=8 --kernel fwd_hopper --rounds 7 \
  --config dense,16384,32,8,128,fractional --config dense,65536,32,8,128,fractional \
  --config packed,65536,32,8,128,fractional --config dense,65536,32,8,64,fractional \
  --config dense,32768,32,8,128,fractional; echo "ab $((SECONDS-s)) s"
s=$SECONDS; timeout 60 python3 tools/ab_switch.py FIBSPARSE_HOPPER_TILES=4 --kernel fwd_hopper --rounds 7 \
  --config dense,16384,32,8,128,fractional; echo "ab $((SECONDS-s)) s"
