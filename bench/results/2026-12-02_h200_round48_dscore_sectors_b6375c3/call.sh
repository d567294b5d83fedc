#!/bin/bash
# Round 48: build the change; each kernel's time (ab46.py --kernels; the kernels of main are in the check at 722148f);
# the stored-dS tests; racecheck and memcheck while device time lasts.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 TORCH_CUDA_ARCH_LIST=9.0a
root=$PWD
s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
(cd /tmp && timeout 45 python3 $root/.devrun/ab46.py --kernels 2>&1 | grep -v -i warn > $OUT/kernels.log; echo "kernels rc=$? $((SECONDS-s)) s"); grep -E "^(dense|packed)|dkdv" $OUT/kernels.log
timeout 60 python3 -m pytest -q -n 8 tests/test_kernels.py tests/test_varlen.py -k "dscores or bad_lengths or one_long_sequence" -p no:cacheprovider -p no:benchmark > $OUT/tests.log 2>&1
echo "tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/tests.log | tail -5
for tool in racecheck memcheck; do
  timeout 80 compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse --tool $tool python3 tools/sanitize_kernels.py > $OUT/$tool.log 2>&1; echo "$tool rc=$? $((SECONDS-s)) s"; tail -1 $OUT/$tool.log
done
gzip -f $OUT/build.log
echo "done $((SECONDS-s)) s"
