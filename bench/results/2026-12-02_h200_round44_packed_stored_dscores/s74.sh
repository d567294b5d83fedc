#!/bin/bash
# Round 44, the GPU check: build; the GPU check's test selection; memcheck, racecheck and
# synccheck (tools/sanitize_kernels.py, with packed batches on the stored-dS backward);
# one round of ab44.py (packed batches with stored dS and on the general passes, dense controls).
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
root=$PWD
s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
python3 -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, "python", sys.version.split()[0])'
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
timeout 230 python3 -m pytest -q -n 8 tests -k "cuda or gradcheck or hopper" -p no:cacheprovider -p no:benchmark > $OUT/gpu_tests.log 2>&1
echo "GPU tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/gpu_tests.log | tail -8; gzip -f $OUT/gpu_tests.log
for tool in memcheck racecheck synccheck; do
  timeout 120 compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse --tool $tool python3 tools/sanitize_kernels.py > $OUT/$tool.log 2>&1; echo "$tool rc=$? $((SECONDS-s)) s"; tail -1 $OUT/$tool.log
done
(cd /tmp && timeout 120 python3 $root/.devrun/ab44.py 2>&1 | grep -v -i warn | tee $OUT/ab_final.log)
gzip -f $OUT/build.log
echo "done $((SECONDS-s)) s"
