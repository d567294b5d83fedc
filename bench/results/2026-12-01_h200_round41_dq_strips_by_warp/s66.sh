#!/bin/bash
# Round 41 profile: where the general dq pass spends its stalls, per SASS line, fractional against integer, 64k MHA d 64.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 OMP_NUM_THREADS=2
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"
s=$SECONDS; python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1 || { tail -40 $OUT/build.log; exit 1; }
echo "build $((SECONDS-s)) s"
ncu --version | tail -1
timeout 300 ncu --clock-control none --kernel-name regex:"dq_mma" --launch-count 2 --import-source yes \
  --section SourceCounters --section WarpStateStats --section LaunchStats --section Occupancy --section SpeedOfLight \
  --section MemoryWorkloadAnalysis -f -o $OUT/dq64 python3 .devrun/prof41.py > $OUT/prof.log 2>&1; echo "ncu rc=$? $((SECONDS-s)) s"; tail -3 $OUT/prof.log
timeout 120 ncu -i $OUT/dq64.ncu-rep --page source --csv --print-source sass > $OUT/dq64_sass.csv 2> $OUT/dq64_sass.err
echo "sass rc=$? $(wc -c < $OUT/dq64_sass.csv) bytes"; head -c 300 $OUT/dq64_sass.err; gzip -f $OUT/dq64_sass.csv
timeout 60 ncu -i $OUT/dq64.ncu-rep --page details > $OUT/dq64_details.txt 2>&1
rm -f $OUT/dq64.ncu-rep; gzip -f $OUT/build.log
echo "done $((SECONDS-s)) s"
