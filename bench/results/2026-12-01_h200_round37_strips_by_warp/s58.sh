#!/bin/bash
# Round 37, the keep-targets at the final csrc: build; the quick sweep (1k x 16, 16k; SDPA, Flex).
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
s=$SECONDS
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
FIBSPARSE_COMMIT=$(cat .devrun/commit) timeout 240 python3 bench/bench_sweep.py --quick --out $OUT/sweep_quick > $OUT/sweep_quick.log 2>&1
echo "sweep rc=$? $((SECONDS-s)) s"; grep -E "^B=|fwd/fwd\+bwd" $OUT/sweep_quick.log | cut -c1-300 | head -20
