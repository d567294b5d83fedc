#!/usr/bin/env bash
# Nsight Compute profile of every fibsparse kernel at the benchmark workload
# (bf16, 8 heads, head_dim 64, window 128, Fibonacci offsets):
# achieved DRAM bandwidth and SM throughput (SpeedOfLight), occupancy,
# registers, shared memory and spills. Run on the device after building:
#
#   bash tools/profile_ncu.sh [seqlen [batch]]   # writes $OUT/ncu.txt when OUT is set
set -euo pipefail
# The built module and the target script are found relative to the repository root.
cd "$(dirname "$0")/.."
seqlen=${1:-16384}
batch=${2:-1}
log=${OUT:-/tmp}/ncu.txt

echo "=== registers, shared memory, spills per kernel (cuobjdump)"
# bfloat16 instantiations only (the other dtypes look alike); base names are demangled by c++filt.
cuobjdump --dump-resource-usage fibsparse_ext/_C*.so 2>/dev/null | grep -A1 "Function _ZN9fibsparse" \
  | grep -E "Function|REG" | paste - - | grep BFloat16 | sed -E 's/.*Function ([^:]*):/\1/' \
  | while read -r name usage; do echo "$(echo "$name" | c++filt | sed -E 's/\(fibsparse::Params\)//')  $usage"; done

echo "=== ncu (clock control off), seqlen $seqlen, batch $batch"
# ncu matches the kernels' base names (no namespace).
ncu --clock-control none --kernel-name regex:"fwd_|dq_|dkdv_|decode_" \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis \
    --section WarpStateStats --section ComputeWorkloadAnalysis \
    --metrics "smsp__inst_executed.sum,regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
    python3 tools/profile_target.py "$seqlen" "$batch" > "$log" 2>&1 || { tail -30 "$log"; exit 1; }
grep -E "^  [a-z_]+kernel|void |DRAM Throughput|Memory Throughput|Compute \(SM\) Throughput|Duration|Achieved Occupancy|Theoretical Occupancy|Registers Per Thread|L2 Hit Rate|L1/TEX Hit Rate|L2 Cache Throughput|L1/TEX Cache Throughput|Stall|Executed Ipc Active|Issue Slots Busy|inst_executed.sum|stalled_(barrier|long_scoreboard|short_scoreboard|math_pipe_throttle|wait|mio_throttle|not_selected|lg_throttle|dispatch_stall|no_instruction)_per" "$log"
echo "(full report: $log)"
