#!/bin/bash
# The fair sweep at the current kernels (csrc as 44ae836, whose GPU check and sanitizers are recorded), call B:
# build; FA4's second wheels; bench_sweep.py --fair.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
python3 -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, "python", sys.version.split()[0])'
TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"; gzip -f $OUT/build.log
cp .fa4b/* /tmp/fa4/ && cd /tmp/fa4 && cat cu13.part.* > "$(cat BIG_WHEEL_NAME)" && rm cu13.part.* BIG_WHEEL_NAME && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/fa4/*.whl && cd - > /dev/null
echo "fa4 rc=$? $((SECONDS-s)) s"
FIBSPARSE_COMMIT=$(cat .devrun/commit) PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages timeout 400 python3 bench/bench_sweep.py --fair --out $OUT/sweep_fair > $OUT/sweep_fair.log 2>&1
echo "sweep rc=$? $((SECONDS-s)) s"; grep -E "^B=1|^\[|fwd/fwd\+bwd ms" $OUT/sweep_fair.log | sed 's/^.*\(B=1\)/\1/' | cut -c1-200 | head -40
