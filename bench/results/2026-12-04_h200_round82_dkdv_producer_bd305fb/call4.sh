#!/usr/bin/env bash
# Round 82's third call: variant 4 (v rows in shared memory) against the one-tile pass; tests and sanitizers on it.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
source tools/device_steps.sh
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 OMP_NUM_THREADS=2
step_deadline=$((SECONDS + 575))
exec > >(tee "${OUT:-/tmp}/round82c.log") 2>&1
echo "commit: $(cat .devrun/commit)+worktree  csrc $(find csrc -type f | LC_ALL=C sort | xargs sha1sum | sha1sum | cut -c1-12)  $(date -u +%FT%TZ)"
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader
step build 300 build_extension || { print_summary "${steps_run[@]}"; exit 1; }
sed 's/"1" if producer else "0"/"4" if producer else "0"/; s/setenv(SWITCH, "1")/setenv(SWITCH, "4")/' tests/test_dkdv_producer.py > tests/test_dkdv_producer_v4.py
if step producer_tests 150 python3 -m pytest tests/test_dkdv_producer.py tests/test_dkdv_producer_v4.py -x -q -p no:cacheprovider; then
  step ab4 200 python3 tools/ab_switch.py FIBSPARSE_DKDV_PRODUCER=4 --kernel dkdv --rounds 5 \
    --config dense,65536,32,8,128,integer --config dense,131072,32,8,128,integer \
    --config dense,65536,8,8,64,integer --config dense,131072,8,8,64,integer --config packed,65536,32,8,128,integer 2>&1 | grep -v "_warn_once\|UserWarning"
  export FIBSPARSE_DKDV_PRODUCER=4
  for tool in racecheck memcheck synccheck; do
    step "$tool" 100 "${sanitizer_command[@]}" --tool "$tool" python3 tools/sanitize_kernels.py 2>&1 | grep -v "^=========     and" | tail -12
  done
fi
rm -f tests/test_dkdv_producer_v4.py
print_summary "${steps_run[@]}"
