#!/bin/bash
# Round 34: Nsight Compute of the forward and the dq pass from stored dS at 64k GQA d 128, integer then fractional.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
s=$SECONDS
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
timeout 200 ncu --clock-control none --kernel-name regex:"fwd_hopper|dq_from_dscores" \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis \
    --section WarpStateStats --section ComputeWorkloadAnalysis --section InstructionStats \
    --metrics "smsp__inst_executed.sum,smsp__inst_executed_pipe_tensor.sum,smsp__inst_executed_op_shared_ld.sum,regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
    python3 .devrun/prof_frac.py > $OUT/ncu_fwd_dq.txt 2>&1
echo "ncu rc=$? $((SECONDS-s)) s"
grep -E "void |Duration|Registers Per|Achieved Occ|L2 Cache Throughput|DRAM Throughput|Compute \(SM\) Th|Executed Ipc Active|inst_executed.sum|pipe_tensor.sum|shared_ld.sum|stalled_(barrier|long_scoreboard|short_scoreboard|math_pipe_throttle|wait|mio_throttle|not_selected|lg_throttle|dispatch_stall|no_instruction|selected|membar|sleeping|tex_throttle|drain|branch_resolving)_per" $OUT/ncu_fwd_dq.txt | sed -E 's/ +/ /g' | cut -c1-150
