#!/bin/bash
# Nsight Compute: fractional against integer kernels at 64k GQA 32/8 d 128 (second step of two),
# and the source counters of the fractional dk/dv pass.
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../../.." || exit 2  # the repository root
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit ${FIBSPARSE_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__)'
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > ${OUT:-/tmp}/build.log 2>&1 || { tail -30 ${OUT:-/tmp}/build.log; exit 1; }
echo "built $((SECONDS-s)) s"
for kind in int frac; do
  name=kernels_${kind}_gqa128_64k
  timeout 120 ncu --clock-control none --kernel-name regex:"fwd_hopper|dkdv_mma|dq_from_dscores_with" \
    --launch-skip 3 --launch-count 3 \
    --section SpeedOfLight --section WarpStateStats --section InstructionStats --section MemoryWorkloadAnalysis \
    --section Occupancy --section LaunchStats \
    -f -o ${OUT:-/tmp}/$name python3 "$here/profile_step.py" 65536 32 8 128 $kind > ${OUT:-/tmp}/$name.log 2>&1
  echo "ncu $kind rc=$? $((SECONDS-s)) s"; tail -2 ${OUT:-/tmp}/$name.log
  timeout 30 ncu -i ${OUT:-/tmp}/$name.ncu-rep --page details > ${OUT:-/tmp}/${name}_details.txt 2>&1
  grep -E "^  [a-z_:]+.*\(|Duration|DRAM Throughput|L2 Cache Throughput|Compute \(SM\) Throughput|Executed Ipc Active|Registers Per|Achieved Occupancy|Warp Cycles Per Issued|Executed Instructions  |L2 Hit" ${OUT:-/tmp}/${name}_details.txt | head -60
  rm -f ${OUT:-/tmp}/$name.ncu-rep
done
name=dkdv_frac_gqa128_64k
timeout 150 ncu --clock-control none --kernel-name regex:"dkdv_mma" --launch-skip 1 --launch-count 1 \
  --section SourceCounters --section WarpStateStats \
  -f -o ${OUT:-/tmp}/$name python3 "$here/profile_step.py" 65536 32 8 128 frac > ${OUT:-/tmp}/$name.log 2>&1
echo "ncu source rc=$? $((SECONDS-s)) s"; tail -2 ${OUT:-/tmp}/$name.log
timeout 60 ncu -i ${OUT:-/tmp}/$name.ncu-rep --page source --csv --print-source sass > ${OUT:-/tmp}/${name}_sass.csv 2> ${OUT:-/tmp}/${name}_sass.err
gzip -f ${OUT:-/tmp}/${name}_sass.csv
timeout 20 python3 tools/ncu_source_summary.py ${OUT:-/tmp}/${name}_sass.csv.gz --top 30 > ${OUT:-/tmp}/${name}_summary.txt 2>&1
head -60 ${OUT:-/tmp}/${name}_summary.txt
rm -f ${OUT:-/tmp}/$name.ncu-rep
gzip -f ${OUT:-/tmp}/build.log
echo "done $((SECONDS-s)) s"
