#!/bin/bash
# Nsight Compute of the stored-dS dk/dv pass at 64k GQA 32/8 d 128: integer offsets, then fractional positions.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
s=$SECONDS
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
timeout 200 ncu --clock-control none --kernel-name regex:"dkdv_mma_kernel" --launch-count 2 \
  --section WarpStateStats --section SpeedOfLight --section Occupancy --section LaunchStats --section InstructionStats \
  python3 .devrun/prof_frac.py > $OUT/ncu_dkdv_int_frac_64k.txt 2>&1
echo "ncu rc=$? $((SECONDS-s)) s"
grep -E "void |Duration|L2 Cache Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Registers Per Thread|Warp Cycles Per Issued|Executed Instructions  |Issued Ipc|Stall" $OUT/ncu_dkdv_int_frac_64k.txt | cut -c1-140 | head -50
gzip -f $OUT/build.log
