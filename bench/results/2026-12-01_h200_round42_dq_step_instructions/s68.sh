#!/bin/bash
# After round 42: bench_fractional.py (fractional against integer, one process) and its per-kernel times, at the final kernels.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 OMP_NUM_THREADS=2
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"
s=$SECONDS; python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1 || { tail -40 $OUT/build.log; exit 1; }
echo "build $((SECONDS-s)) s"
(cd bench && FIBSPARSE_COMMIT=$(cat ../.devrun/commit) timeout 200 python3 bench_fractional.py --kernels 2>&1 | grep -v -i warn | tee $OUT/bench_fractional.log)
echo "done $((SECONDS-s)) s"; gzip -f $OUT/build.log
