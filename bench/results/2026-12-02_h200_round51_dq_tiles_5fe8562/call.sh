#!/bin/bash
# Round 51: one build with main's dq route and three multi-tile ones; stored-dS and GQA tests with each; A/B; sanitizers on 4x2 and 4x4.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 TORCH_CUDA_ARCH_LIST=9.0a
root=$PWD; s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
for var in 4x2 4x4 2x2; do
  FIBSPARSE_EXP51=$var timeout 70 python3 -m pytest -q -n 8 tests/test_kernels.py tests/test_varlen.py -k "dscores or bad_lengths or one_long_sequence or gqa" -p no:cacheprovider -p no:benchmark > $OUT/tests_$var.log 2>&1
  echo "tests $var rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/tests_$var.log | tail -3
done
(cd /tmp && timeout 200 python3 $root/.devrun/ab51.py 2>&1 | grep -v -i warn > $OUT/ab51.log; echo "ab51 rc=$? $((SECONDS-s)) s"); cat $OUT/ab51.log
for var in 4x2 4x4; do for tool in racecheck memcheck synccheck; do
  FIBSPARSE_EXP51=$var timeout 60 compute-sanitizer --error-exitcode 1 --kernel-name kns=dq_from --tool $tool python3 tools/sanitize_kernels.py > $OUT/${tool}_$var.log 2>&1; echo "$tool $var rc=$? $((SECONDS-s)) s"; tail -1 $OUT/${tool}_$var.log
done; done
gzip -f $OUT/build.log
echo "done $((SECONDS-s)) s"
