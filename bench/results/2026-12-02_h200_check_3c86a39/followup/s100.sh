#!/bin/bash
# After the check at 3c86a39, whose GPU test selection ran past its 235 s: build; the same selection, verbose, to
# list the tests that do not finish; the kernel times.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 TORCH_CUDA_ARCH_LIST=9.0a
root=$PWD; s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
python3 -m pytest -q --collect-only tests -k "cuda or gradcheck or hopper" -p no:cacheprovider -p no:benchmark 2>/dev/null | grep "::" | sort > $OUT/collected.txt
echo "collected $(wc -l < $OUT/collected.txt) $((SECONDS-s)) s"
timeout 250 python3 -m pytest -v -n 8 tests -k "cuda or gradcheck or hopper" -o faulthandler_timeout=100 -p no:cacheprovider -p no:benchmark > $OUT/gpu_tests_v.log 2>&1
echo "GPU tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/gpu_tests_v.log | tail -8
grep -oE "(PASSED|SKIPPED|FAILED|ERROR|XFAIL|XPASS) tests/[^ ]*" $OUT/gpu_tests_v.log | awk '{print $2}' | sort > $OUT/finished.txt
echo "unfinished:"; comm -23 $OUT/collected.txt $OUT/finished.txt | head -20
(cd /tmp && timeout 40 python3 $root/.devrun/ab46.py --kernels 2>&1 | grep -v -i warn > $OUT/kernels.log; echo "kernels $((SECONDS-s)) s"; grep -E "^(dense|packed)|hopper_fwd" $OUT/kernels.log)
gzip -f $OUT/build.log $OUT/gpu_tests_v.log
echo "done $((SECONDS-s)) s"
