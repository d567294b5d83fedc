#!/usr/bin/env bash
# Round 77 A/B: one build of main; four spans a block against the rule's two, fractional positions with one head a warpgroup (GQA 16/8; no code changes).
set -uo pipefail
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 OMP_NUM_THREADS=2
exec > >(tee "${OUT:-/tmp}/ab77.log") 2>&1
echo "commit: $(cat .devrun/commit)  $(date -u +%Y-%m-%dT%H:%M:%SZ)"
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__)'
s=$SECONDS; python3 -m pip install --no-build-isolation --no-deps -e . -q 2>&1 | tail -3; echo "build $((SECONDS-s)) s"
s=$SECONDS; timeout 200 python3 tools/ab_switch.py FIBSPARSE_HOPPER_TILES=4 --kernel fwd_hopper --rounds 7 \
  --config dense,16384,16,8,128,fractional --config dense,65536,16,8,128,fractional \
  --config dense,65536,16,8,64,fractional; echo "ab $((SECONDS-s)) s"
