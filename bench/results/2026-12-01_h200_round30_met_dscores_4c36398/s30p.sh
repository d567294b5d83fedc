#!/bin/bash
# Nsight Compute of the window alone's forward and backward at 64k MHA d 64 (bf16) at 4c36398: per kernel
# duration, throughput, occupancy and stall reasons (round 30's kernels).
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
s=$SECONDS
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 1; }
echo "built $((SECONDS-s)) s  commit $(cat .devrun/commit)"; ncu --version | tail -1
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader
name=mha64_window_64k
timeout 150 ncu --clock-control none --kernel-name regex:"fwd_hopper|dkdv_mma|dq_from_dscores" \
  --launch-skip 3 --launch-count 3 --section WarpStateStats --section SpeedOfLight --section MemoryWorkloadAnalysis \
  --section Occupancy --section LaunchStats python3 .devrun/prof_window.py > $OUT/${name}_details.txt 2>&1
echo "ncu rc=$? $((SECONDS-s)) s"
grep -E "void |Duration|Memory Throughput|DRAM Throughput|L2 Cache Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Registers Per Thread|Warp Cycles Per Issued" $OUT/${name}_details.txt | head -40
gzip -f $OUT/build.log
