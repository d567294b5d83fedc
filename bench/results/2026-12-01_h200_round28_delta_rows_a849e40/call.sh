#!/bin/bash
# The window alone's delta pass reading whole rows: build; the kernels' tests (among them dk/dv bitwise those of
# the general passes, which holds only if delta keeps its bits); memcheck, racecheck; Nsight Compute of the
# delta pass at 64k MHA d 64; one round of the window alone's times.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 1; }
echo "built $((SECONDS-s)) s"
timeout 80 python3 -m pytest -q -n 8 tests/test_kernels.py -k "window_alone or gqa" -p no:cacheprovider -p no:benchmark > $OUT/tests.log 2>&1
echo "tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/tests.log | tail -8
sanitize="compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse"
for tool in memcheck racecheck; do
  timeout 60 $sanitize --tool $tool python3 tools/sanitize_kernels.py > $OUT/$tool.log 2>&1
  echo "=== $tool rc=$? $((SECONDS-s)) s"; tail -1 $OUT/$tool.log
done
timeout 60 ncu --clock-control none --kernel-name regex:"delta_kernel" --launch-skip 1 --launch-count 1 \
  --section SpeedOfLight --section MemoryWorkloadAnalysis python3 .devrun/prof_window.py > $OUT/ncu_delta.txt 2>&1
echo "ncu rc=$? $((SECONDS-s)) s"; grep -E "delta_kernel|Duration|DRAM Throughput|L2 Cache Throughput|Memory Throughput" $OUT/ncu_delta.txt | head -8
(cd /tmp && timeout 60 python3 $OLDPWD/.devrun/win_ab.py 2>&1 | tee $OUT/window_times.log)
gzip -f $OUT/build.log $OUT/tests.log
echo "done $((SECONDS-s)) s"
