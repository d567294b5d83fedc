#!/bin/bash
# After round 56: build; Nsight Compute of the Hopper forward at 64k GQA 32/8 d 128 (output through the tile).
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 1; }
echo "built $((SECONDS-s)) s"
name=gqa128_64k_output_through_tile
timeout 200 ncu --clock-control none --kernel-name regex:"fwd_hopper" --launch-skip 1 --launch-count 1 \
  --section SourceCounters --section WarpStateStats --section SpeedOfLight --section Occupancy \
  --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section InstructionStats \
  -f -o $OUT/$name python3 .devrun/prof26.py 65536 32 8 128 > $OUT/$name.log 2>&1
echo "ncu rc=$? $((SECONDS-s)) s"; tail -3 $OUT/$name.log
timeout 60 ncu -i $OUT/$name.ncu-rep --page details > $OUT/${name}_details.txt 2>&1
grep -E "Duration|Throughput|Hit Rate|Achieved Occupancy|Registers|Executed Ipc|Issue Slots|Warp Cycles Per Issued|Pipe" $OUT/${name}_details.txt | head -30
timeout 100 ncu -i $OUT/$name.ncu-rep --page source --csv --print-source sass > $OUT/${name}_sass.csv 2> $OUT/${name}_sass.err
gzip -f $OUT/${name}_sass.csv
python3 .devrun/summarize.py $OUT/${name}_sass.csv.gz 30 > $OUT/${name}_summary.txt 2>&1
head -45 $OUT/${name}_summary.txt
rm -f $OUT/$name.ncu-rep
gzip -f $OUT/build.log
echo "done $((SECONDS-s)) s"
