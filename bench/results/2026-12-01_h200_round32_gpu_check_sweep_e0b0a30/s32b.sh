#!/bin/bash
# Round 32, call B (right after A, same machine and build): the GPU check's test selection; memcheck and racecheck.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
timeout 260 python3 -m pytest -q -n 8 tests -k "cuda or gradcheck" -p no:cacheprovider -p no:benchmark > $OUT/tests.log 2>&1
echo "tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/tests.log | tail -12
sanitize="compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse"
for tool in memcheck racecheck; do
  timeout 100 $sanitize --tool $tool python3 tools/sanitize_kernels.py > $OUT/$tool.log 2>&1
  echo "=== $tool rc=$? $((SECONDS-s)) s"; tail -2 $OUT/$tool.log
done
gzip -f $OUT/tests.log
echo "done $((SECONDS-s)) s"
