#!/bin/bash
# Nsight Compute of the window alone's forward and stored-dS backward at 64k MHA d 64 (bf16): per kernel
# duration, throughput, occupancy, stall reasons, and the per-instruction summary.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
s=$SECONDS
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 1; }
echo "built $((SECONDS-s)) s  commit $(cat .devrun/commit)"; ncu --version | tail -1
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader
name=mha64_window_64k
timeout 200 ncu --clock-control none --kernel-name regex:"fwd_hopper|delta_kernel|dkdv_mma|dq_from_dscores" \
  --launch-skip 4 --launch-count 4 --section SourceCounters --section WarpStateStats --section SpeedOfLight \
  --section Occupancy --section LaunchStats -f -o $OUT/$name python3 .devrun/prof_window.py > $OUT/$name.log 2>&1
echo "ncu rc=$? $((SECONDS-s)) s"; tail -2 $OUT/$name.log
timeout 60 ncu -i $OUT/$name.ncu-rep --page details > $OUT/${name}_details.txt 2>&1
grep -E "^  [a-z_:]+|void |Duration|Memory Throughput|DRAM Throughput|L2 Cache Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Registers Per Thread|Warp Cycles Per Issued" $OUT/${name}_details.txt | head -60
timeout 100 ncu -i $OUT/$name.ncu-rep --page source --csv --print-source sass > $OUT/${name}_sass.csv 2> $OUT/${name}_sass.err
gzip -f $OUT/${name}_sass.csv
python3 .devrun/summ26.py $OUT/${name}_sass.csv.gz > $OUT/${name}_summary.txt 2>&1
grep -v "^    " $OUT/${name}_summary.txt | head -30
rm -f $OUT/$name.ncu-rep
gzip -f $OUT/build.log
