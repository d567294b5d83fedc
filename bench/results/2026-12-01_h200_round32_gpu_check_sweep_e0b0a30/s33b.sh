#!/bin/bash
# Call B (right after A, same machine and build): FA4's second wheels, the fair sweep, then Nsight Compute of the
# full pattern's backward kernels at 64k GQA 32/8 d 128.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
cp .fa4b/* /tmp/fa4/ && cd /tmp/fa4 && cat cu13.part.* > "$(cat BIG_WHEEL_NAME)" && rm cu13.part.* BIG_WHEEL_NAME && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/fa4/*.whl && cd - > /dev/null
FIBSPARSE_COMMIT=$(cat .devrun/commit) PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages timeout 300 python3 bench/bench_sweep.py --fair --out $OUT/sweep_fair > $OUT/sweep_fair.log 2>&1
echo "sweep rc=$? $((SECONDS-s)) s"; grep -E "^B=1|^\[|fwd/fwd\+bwd ms" $OUT/sweep_fair.log | sed 's/^.*\(B=1\)/\1/' | cut -c1-260
name=gqa128_full_64k
timeout 150 ncu --clock-control none --kernel-name regex:"delta_kernel|dkdv_mma|dq_from_dscores" \
  --launch-skip 3 --launch-count 3 --section WarpStateStats --section SpeedOfLight --section MemoryWorkloadAnalysis \
  --section Occupancy --section LaunchStats python3 .devrun/prof_full.py > $OUT/${name}_details.txt 2>&1
echo "ncu rc=$? $((SECONDS-s)) s"
grep -E "void |Duration|Memory Throughput|DRAM Throughput|L2 Cache Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Registers Per Thread|Warp Cycles Per Issued" $OUT/${name}_details.txt | cut -c1-150 | head -40
