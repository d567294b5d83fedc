#!/bin/bash
# Round 29, call B (right after A, same machine and build): FA4's second wheels, the fair sweep, then the GPU
# check's test selection.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
cp .fa4b/* /tmp/fa4/ && cd /tmp/fa4 && cat cu13.part.* > "$(cat BIG_WHEEL_NAME)" && rm cu13.part.* BIG_WHEEL_NAME && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/fa4/*.whl && cd - > /dev/null
FIBSPARSE_COMMIT=$(cat .devrun/commit) PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages timeout 300 python3 bench/bench_sweep.py --fair --out $OUT/sweep_fair 2>&1 | tee $OUT/sweep_fair.log | grep -v "^  "
echo "sweep $((SECONDS-s)) s"
timeout $((570 - SECONDS)) python3 -m pytest -q -n 8 tests -k "cuda or gradcheck" -p no:cacheprovider -p no:benchmark > $OUT/tests.log 2>&1
echo "tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/tests.log | tail -12
gzip -f $OUT/tests.log
