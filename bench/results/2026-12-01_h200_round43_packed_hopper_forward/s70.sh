#!/bin/bash
# Round 43, correctness: build the change (packed batches on the Hopper forward); the GPU check's test
# selection; memcheck, racecheck and synccheck.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
python3 -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, "python", sys.version.split()[0])'
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
timeout 100 python3 -m pytest -q -x tests/test_hopper.py tests/test_varlen.py -k "packed or non_finite_rows" -p no:cacheprovider -p no:benchmark 2>&1 | tail -15
echo "new tests $((SECONDS-s)) s"
timeout 220 python3 -m pytest -q -n 8 tests -k "cuda or gradcheck or hopper" -p no:cacheprovider -p no:benchmark > $OUT/gpu_tests.log 2>&1
echo "GPU tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/gpu_tests.log | tail -8; gzip -f $OUT/gpu_tests.log
for tool in memcheck racecheck synccheck; do
  timeout 75 compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse --tool $tool python3 tools/sanitize_kernels.py > $OUT/$tool.log 2>&1; echo "$tool rc=$? $((SECONDS-s)) s"; tail -1 $OUT/$tool.log
done
gzip -f $OUT/build.log
echo "done $((SECONDS-s)) s"
