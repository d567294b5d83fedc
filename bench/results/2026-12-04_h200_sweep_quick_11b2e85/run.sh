#!/bin/bash
# The quick sweep (1k x 16, 16k MHA d 64 integer and fractional, 16k GQA d 128): the keep-targets.
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../../.." || exit 2  # the repository root
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2 MAX_JOBS=16
s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit ${FIBSPARSE_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader
python3 -m pip install --no-build-isolation --no-deps -e . -q > "${OUT:-/tmp}/build.log" 2>&1 || { tail -30 "${OUT:-/tmp}/build.log"; exit 1; }
echo "built $((SECONDS-s)) s"
FIBSPARSE_COMMIT=${FIBSPARSE_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)} timeout 300 python3 bench/bench_sweep.py --quick --out ${OUT:-/tmp}/sweep_quick 2>&1 | grep -v "UserWarning\|_warn_once"
echo "sweep rc=${PIPESTATUS[0]} $((SECONDS-s)) s"
