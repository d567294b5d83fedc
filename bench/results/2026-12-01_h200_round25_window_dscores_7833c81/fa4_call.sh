#!/bin/bash
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
cp .fa4b/* /tmp/fa4/ && cd /tmp/fa4 && cat cu13.part.* > "$(cat BIG_WHEEL_NAME)" && rm cu13.part.* BIG_WHEEL_NAME && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/fa4/*.whl && cd - > /dev/null
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages
echo "commit $(cat .devrun/commit)"; nvidia-smi --query-gpu=name,clocks.sm --format=csv,noheader
timeout 110 python3 .devrun/fa4_window.py 2>&1 | grep -v Warning | tee $OUT/fa4_window.log
