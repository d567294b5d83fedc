#!/bin/bash
# Round 49: one build with the three dk/dv variants; correctness tests on variants 1 and 2; A/B/C; racecheck, memcheck.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 TORCH_CUDA_ARCH_LIST=9.0a
root=$PWD; s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
for var in 1 2; do
  FIBSPARSE_EXP49=$var timeout 70 python3 -m pytest -q -n 8 tests/test_kernels.py tests/test_varlen.py -k "dscores or bad_lengths or one_long_sequence" -p no:cacheprovider -p no:benchmark > $OUT/tests_v$var.log 2>&1
  echo "tests variant $var rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/tests_v$var.log | tail -3
done
(cd /tmp && timeout 200 python3 $root/.devrun/ab49.py 2>&1 | grep -v -i warn > $OUT/ab49.log; echo "ab49 rc=$? $((SECONDS-s)) s"); cat $OUT/ab49.log
for tool in racecheck memcheck; do
  FIBSPARSE_EXP49=2 timeout 60 compute-sanitizer --error-exitcode 1 --kernel-name kns=dkdv --tool $tool python3 tools/sanitize_kernels.py > $OUT/${tool}_v2.log 2>&1; echo "$tool v2 rc=$? $((SECONDS-s)) s"; tail -1 $OUT/${tool}_v2.log
done
gzip -f $OUT/build.log
echo "done $((SECONDS-s)) s"
