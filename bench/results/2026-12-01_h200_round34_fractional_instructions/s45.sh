#!/bin/bash
# Round 34, version C: build; the GPU test selection (with the Hopper forward's tests); memcheck and racecheck;
# the fractional A/B and kernel times.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
python3 -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, "python", sys.version.split()[0])'
s=$SECONDS
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
timeout 300 python3 -m pytest -q -n 8 tests -k "cuda or gradcheck or hopper" -p no:cacheprovider -p no:benchmark > $OUT/tests.log 2>&1
echo "tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/tests.log | tail -12
sanitize="compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse"
for tool in memcheck racecheck; do
  timeout 100 $sanitize --tool $tool python3 tools/sanitize_kernels.py > $OUT/$tool.log 2>&1
  echo "=== $tool rc=$? $((SECONDS-s)) s"; tail -2 $OUT/$tool.log
done
timeout 100 python3 .devrun/ab33.py ab 2>&1 | tee $OUT/ab33.log
timeout 60 python3 .devrun/ab33.py kernels 2>&1 | grep -v Warn | tee $OUT/kernels33.log
gzip -f $OUT/build.log $OUT/tests.log
echo "done $((SECONDS-s)) s"
