#!/usr/bin/env bash
# Round 72 A/B: build, the CUDA tests, then both switches at fractional head_dim 64 and the dq switch at d128 (general route).
set -uo pipefail
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 OMP_NUM_THREADS=2
exec > >(tee "${OUT:-/tmp}/ab72.log") 2>&1
echo "commit: $(cat .devrun/commit)  $(date -u +%Y-%m-%dT%H:%M:%SZ)"
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__)'
s=$SECONDS; python3 -m pip install --no-build-isolation --no-deps -e . -q 2>&1 | tail -3; echo "build $((SECONDS-s)) s"
s=$SECONDS; timeout 170 python3 -m pytest tests -q -n 8 -k "cuda or gradcheck" -p no:cacheprovider -p no:benchmark 2>&1 | tail -4; echo "tests $((SECONDS-s)) s"
F64="--config dense,65536,8,8,64,fractional --config dense,131072,8,8,64,fractional --config dense,65536,32,8,64,fractional --config packed,65536,32,8,64,fractional"
s=$SECONDS; timeout 150 python3 tools/ab_switch.py FIBSPARSE_GENERAL_DQ_KEPT_OFFSETS=0 --kernel dq_mma --kernel dkdv --rounds 7 $F64; echo "ab dq $((SECONDS-s)) s"
s=$SECONDS; timeout 150 python3 tools/ab_switch.py FIBSPARSE_GENERAL_DKDV_KEPT_OFFSETS=0 --kernel dkdv --kernel dq_mma --rounds 7 $F64; echo "ab dkdv $((SECONDS-s)) s"
s=$SECONDS; FIBSPARSE_STORED_DSCORES=0 timeout 80 python3 tools/ab_switch.py FIBSPARSE_GENERAL_DQ_KEPT_OFFSETS=0 --kernel dq_mma --kernel dkdv --rounds 7 --config dense,65536,32,8,128,integer; echo "ab dq d128 $((SECONDS-s)) s"
