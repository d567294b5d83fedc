#!/bin/bash
# Round 32, call C (right after B, same machine and build): FA4's second wheels, then the fair sweep (the GPU
# check's tests and sanitizers ran in call B).
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
cp .fa4b/* /tmp/fa4/ && cd /tmp/fa4 && cat cu13.part.* > "$(cat BIG_WHEEL_NAME)" && rm cu13.part.* BIG_WHEEL_NAME && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/fa4/*.whl && cd - > /dev/null
timeout 120 python3 -m pytest -q tests/test_varlen.py -k one_long_sequence -p no:cacheprovider -p no:benchmark 2>&1 | tail -2
FIBSPARSE_COMMIT=$(cat .devrun/commit) PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages timeout 300 python3 bench/bench_sweep.py --fair --out $OUT/sweep_fair 2>&1 | tee $OUT/sweep_fair.log | grep -v "^  "
echo "sweep $((SECONDS-s)) s"
