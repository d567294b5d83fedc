#!/usr/bin/env bash
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
source tools/device_steps.sh
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 OMP_NUM_THREADS=2
exec > >(tee "${OUT:-/tmp}/ncu82.log") 2>&1
step build 300 build_extension || exit 1
for v in 0 3 2; do
  echo "=== FIBSPARSE_DKDV_PRODUCER=$v"
  FIBSPARSE_DKDV_PRODUCER=$v timeout 150 ncu --clock-control none --kernel-name regex:"dkdv_" \
    --section SpeedOfLight --section WarpStateStats --section Occupancy --section MemoryWorkloadAnalysis \
    --metrics "smsp__inst_executed.sum,smsp__cycles_active.avg,regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,l1tex__t_bytes_pipe_lsu_mem_local_op_ld.sum,l1tex__t_bytes_pipe_lsu_mem_local_op_st.sum" \
    python3 .devrun/ncu82_target.py > /tmp/ncu_$v.txt 2>&1
  grep -E "void |Duration|Compute \(SM\) Throughput|Memory Throughput|L1/TEX Hit|L2 Hit|Achieved Occupancy|Issue Slots Busy|Executed Ipc A|inst_executed.sum|cycles_active|local_op|stalled_.*ratio" /tmp/ncu_$v.txt | awk '$NF != "0" && $NF != "0.00"' | grep -v "stalled_.*ratio.* 0\.0[0-9]$"
done
