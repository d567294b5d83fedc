#!/bin/bash
# Round 47's reading: Nsight Compute on the dk/dv pass with stored dS at 64k GQA 32/8 d 128, two stages (the commit)
# and three (b5aff9d): launch statistics (the shared memory configuration), occupancy, memory workload (L1 hit
# rate, local memory), warp states.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 TORCH_CUDA_ARCH_LIST=9.0a
root=$PWD
s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit) and b5aff9d"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
rm -rf /tmp/three && cp -r .devrun/three47 /tmp/three
(cd /tmp/three && MAX_JOBS=8 python3 setup.py build_ext --inplace -q > $OUT/build_three.log 2>&1; echo "b5aff9d built rc=$? $((SECONDS-s)) s") &
MAX_JOBS=8 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
wait
ncu --version | tail -1
for side in two three; do
  case $side in two) pp=$root;; three) pp=/tmp/three;; esac
  (cd /tmp && PYTHONPATH=$pp timeout 100 ncu --clock-control none --kernel-name regex:"dkdv_mma" --launch-skip 1 --launch-count 1 \
    --section LaunchStats --section Occupancy --section SpeedOfLight --section MemoryWorkloadAnalysis \
    --section MemoryWorkloadAnalysis_Tables --section WarpStateStats --section SchedulerStats \
    -f -o $OUT/dkdv_$side python3 $root/.devrun/prof_full.py > $OUT/prof_$side.log 2>&1; echo "ncu $side rc=$? $((SECONDS-s)) s")
  timeout 60 ncu -i $OUT/dkdv_$side.ncu-rep --page details > $OUT/dkdv_${side}_details.txt 2>&1
  grep -E "Duration|Shared Memory Configuration Size|Driver Shared Memory|Dynamic Shared Memory Per Block|L1/TEX Hit Rate|L2 Hit Rate|Achieved Occupancy|Registers Per Thread|Memory Throughput|One or More Eligible|Issued Warp|Local" $OUT/dkdv_${side}_details.txt | head -24
  rm -f $OUT/dkdv_$side.ncu-rep
done
gzip -f $OUT/build*.log
echo "done $((SECONDS-s)) s"
