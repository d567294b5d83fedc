#!/bin/bash
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
cp .fa4b/* /tmp/fa4/ && cd /tmp/fa4 && cat cu13.part.* > "$(cat BIG_WHEEL_NAME)" && rm cu13.part.* BIG_WHEEL_NAME && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/fa4/*.whl && cd - > /dev/null
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages
FIBSPARSE_COMMIT=$(cat .devrun/commit) timeout 420 python3 bench/bench_sweep.py --fair --out $OUT/sweep_fair 2>&1 | tee $OUT/sweep_fair.log | grep -v "^  "
