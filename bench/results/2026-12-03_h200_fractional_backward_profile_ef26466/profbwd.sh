#!/bin/bash
# The fractional backward against the integer one at 64k GQA 32/8 d 128: Nsight Compute source counters
# of the dk/dv pass and the dq pass from stored dS, integer then fractional offsets (x 0.97).
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
P=bench/results/2026-12-03_h200_dkdv_profile_508bbae
s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 1; }
echo "built $((SECONDS-s)) s"
for kernel in dkdv_mma dq_from_dscores; do
for kind in int frac; do
  name=${kernel}_gqa128_64k_$kind
  timeout 110 ncu --clock-control none --kernel-name regex:"$kernel" --launch-skip 1 --launch-count 1 \
    --section SourceCounters --section WarpStateStats --section SpeedOfLight --section Occupancy \
    --section InstructionStats -f -o $OUT/$name python3 $P/profdk.py 65536 32 8 128 $kind > $OUT/$name.log 2>&1
  echo "ncu $name rc=$? $((SECONDS-s)) s"; tail -1 $OUT/$name.log
  timeout 15 ncu -i $OUT/$name.ncu-rep --page details > $OUT/${name}_details.txt 2>&1
  grep -E "Duration|Achieved Occupancy|Registers Per|Executed Ipc A|Warp Cycles Per Issued|Executed Instructions  " $OUT/${name}_details.txt | head -8
  timeout 45 ncu -i $OUT/$name.ncu-rep --page source --csv --print-source sass > $OUT/${name}_sass.csv 2> $OUT/${name}_sass.err
  gzip -f $OUT/${name}_sass.csv
  timeout 10 python3 $P/summarize.py $OUT/${name}_sass.csv.gz 12 > $OUT/${name}_summary.txt 2>&1
  head -16 $OUT/${name}_summary.txt
  rm -f $OUT/$name.ncu-rep $OUT/${name}_sass.err $OUT/$name.log
done
done
rm -f $OUT/build.log
echo "done $((SECONDS-s)) s"
