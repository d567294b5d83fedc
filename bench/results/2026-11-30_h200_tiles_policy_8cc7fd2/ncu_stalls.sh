#!/bin/bash
# Stall reasons of the backward passes at 128k GQA 32/8 d128 (full pattern), and where in the SASS they sit.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 OMP_NUM_THREADS=2
s=$SECONDS; python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1 || { tail -40 $OUT/build.log; exit 1; }
echo "build $((SECONDS-s)) s  commit $(cat .devrun/commit)"
${EXTRA_TESTS:-true}
timeout 200 ncu --clock-control none --kernel-name regex:"dq_mma|dkdv_mma" \
  --section WarpStateStats --section SourceCounters --section InstructionStats \
  --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,smsp__inst_executed.sum,smsp__cycles_active.avg" \
  python3 .devrun/prof_gqa.py full > $OUT/ncu_stalls_gqa128k.txt 2>&1; echo "ncu rc=$?"
grep -E "void |stalled_[a-z_]+_per_issue_active.ratio +[0-9.]+|inst_executed.sum|Warp Cycles Per Issued" $OUT/ncu_stalls_gqa128k.txt | sed -E 's/\(fibsparse::Params.*//' | awk '{ if ($0 ~ /stalled/ && $NF+0 < 0.1) next; print }'
