#!/bin/bash
# Nsight Compute source counters of the dk/dv pass at 128k MHA d 64 (csrc as 6cadcd7).
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 1; }
echo "built $((SECONDS-s)) s"
name=dkdv_mha64_128k
timeout 150 ncu --clock-control none --kernel-name regex:"dkdv_mma" --launch-skip 1 --launch-count 1 \
  --section SourceCounters --section WarpStateStats --section SpeedOfLight --section Occupancy \
  --section InstructionStats -f -o $OUT/$name python3 .devrun/profdk.py 131072 8 8 64 > $OUT/$name.log 2>&1
echo "ncu rc=$? $((SECONDS-s)) s"; tail -3 $OUT/$name.log
timeout 15 ncu -i $OUT/$name.ncu-rep --page details > $OUT/${name}_details.txt 2>&1
grep -E "Duration|Throughput|Achieved Occupancy|Registers|Executed Ipc|Issue Slots|Warp Cycles Per Issued" $OUT/${name}_details.txt | head -20
timeout 45 ncu -i $OUT/$name.ncu-rep --page source --csv --print-source sass > $OUT/${name}_sass.csv 2> $OUT/${name}_sass.err
gzip -f $OUT/${name}_sass.csv
timeout 10 python3 .devrun/summarize.py $OUT/${name}_sass.csv.gz 30 > $OUT/${name}_summary.txt 2>&1
head -45 $OUT/${name}_summary.txt
rm -f $OUT/$name.ncu-rep
gzip -f $OUT/build.log
echo "done $((SECONDS-s)) s"
