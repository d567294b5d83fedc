#!/bin/bash
# Nsight Compute: fractional against integer kernels at 64k MHA 8 heads d 64 (second step of
# two): each pass's time, throughput, instructions and stalls; then the source counters of
# the fractional dk/dv pass and of the fractional Hopper forward.
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../../.." || exit 2  # the repository root
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit ${FIBSPARSE_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__)'
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > ${OUT:-/tmp}/build.log 2>&1 || { tail -30 ${OUT:-/tmp}/build.log; exit 1; }
echo "built $((SECONDS-s)) s"
shape="65536 8 8 64"
# The step profiled: the one the GQA profile used, given this shape.
step="$here/../2026-12-04_h200_fractional_profile_c0e7bac/profile_step.py"
for kind in int frac; do
  name=kernels_${kind}_mha64_64k
  timeout 100 ncu --clock-control none --kernel-name regex:"fwd_hopper|dkdv_mma|dq_from_dscores_with" \
    --launch-skip 3 --launch-count 3 \
    --section SpeedOfLight --section WarpStateStats --section InstructionStats --section MemoryWorkloadAnalysis \
    --section Occupancy --section LaunchStats \
    -f -o ${OUT:-/tmp}/$name python3 "$step" $shape $kind > ${OUT:-/tmp}/$name.log 2>&1
  echo "ncu $kind rc=$? $((SECONDS-s)) s"; tail -2 ${OUT:-/tmp}/$name.log
  timeout 30 ncu -i ${OUT:-/tmp}/$name.ncu-rep --page details > ${OUT:-/tmp}/${name}_details.txt 2>&1
  grep -E "^  [a-z_:]+.*\(|Duration|DRAM Throughput|L2 Cache Throughput|Compute \(SM\) Throughput|Executed Ipc Active|Registers Per|Achieved Occupancy|Warp Cycles Per Issued|Executed Instructions  |L2 Hit" ${OUT:-/tmp}/${name}_details.txt | head -60
  rm -f ${OUT:-/tmp}/$name.ncu-rep ${OUT:-/tmp}/$name.log
done
for pass in dkdv_mma fwd_hopper; do
  name=${pass}_frac_mha64_64k
  timeout 100 ncu --clock-control none --kernel-name regex:"$pass" --launch-skip 1 --launch-count 1 \
    --section SourceCounters --section WarpStateStats \
    -f -o ${OUT:-/tmp}/$name python3 "$step" $shape frac > ${OUT:-/tmp}/$name.log 2>&1
  echo "ncu source $pass rc=$? $((SECONDS-s)) s"; tail -2 ${OUT:-/tmp}/$name.log
  timeout 60 ncu -i ${OUT:-/tmp}/$name.ncu-rep --page source --csv --print-source sass > ${OUT:-/tmp}/${name}_sass.csv 2> /dev/null
  gzip -f ${OUT:-/tmp}/${name}_sass.csv
  timeout 20 python3 tools/ncu_source_summary.py ${OUT:-/tmp}/${name}_sass.csv.gz --top 30 > ${OUT:-/tmp}/${name}_summary.txt 2>&1
  head -45 ${OUT:-/tmp}/${name}_summary.txt
  rm -f ${OUT:-/tmp}/$name.ncu-rep ${OUT:-/tmp}/$name.log
done
gzip -f ${OUT:-/tmp}/build.log
echo "done $((SECONDS-s)) s"
