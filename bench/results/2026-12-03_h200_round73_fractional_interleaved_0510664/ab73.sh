#!/usr/bin/env bash
# Round 73 A/B: build, the fractional interleaved forward against the 16-query layout (gradients compared bit for bit), the Hopper fractional tests.
set -uo pipefail
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 OMP_NUM_THREADS=2
exec > >(tee "${OUT:-/tmp}/ab73.log") 2>&1
echo "commit: $(cat .devrun/commit)  $(date -u +%Y-%m-%dT%H:%M:%SZ)"
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__)'
s=$SECONDS; python3 -m pip install --no-build-isolation --no-deps -e . -q 2>&1 | tail -3; echo "build $((SECONDS-s)) s"
s=$SECONDS; timeout 100 python3 -m pytest tests/test_hopper.py -q -n 8 -k "fractional" -p no:cacheprovider -p no:benchmark 2>&1 | tail -4; echo "hopper tests $((SECONDS-s)) s"
s=$SECONDS; timeout 240 python3 tools/ab_switch.py FIBSPARSE_FRACTIONAL_INTERLEAVED=0 --kernel fwd_hopper --rounds 7 \
  --config dense,65536,32,8,128,fractional --config packed,65536,32,8,128,fractional \
  --config dense,131072,32,8,128,fractional --config dense,65536,32,8,64,fractional; echo "ab $((SECONDS-s)) s"
