#!/bin/bash
# Round 50: one build with both dq routes; stored-dS tests with four heads a block; A/B; racecheck, memcheck, synccheck.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 TORCH_CUDA_ARCH_LIST=9.0a
root=$PWD; s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
FIBSPARSE_EXP50=1 timeout 70 python3 -m pytest -q -n 8 tests/test_kernels.py tests/test_varlen.py -k "dscores or bad_lengths or one_long_sequence or gqa" -p no:cacheprovider -p no:benchmark > $OUT/tests_exp50.log 2>&1
echo "tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/tests_exp50.log | tail -3
(cd /tmp && timeout 200 python3 $root/.devrun/ab50.py 2>&1 | grep -v -i warn > $OUT/ab50.log; echo "ab50 rc=$? $((SECONDS-s)) s"); cat $OUT/ab50.log
for tool in racecheck memcheck synccheck; do
  FIBSPARSE_EXP50=1 timeout 60 compute-sanitizer --error-exitcode 1 --kernel-name kns=dq_from --tool $tool python3 tools/sanitize_kernels.py > $OUT/${tool}_exp50.log 2>&1; echo "$tool rc=$? $((SECONDS-s)) s"; tail -1 $OUT/${tool}_exp50.log
done
gzip -f $OUT/build.log
echo "done $((SECONDS-s)) s"
