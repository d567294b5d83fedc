#!/usr/bin/env bash
# Round 82's second call: variants 1-3 of the producer form against the one-tile pass.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
source tools/device_steps.sh
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 OMP_NUM_THREADS=2
step_deadline=$((SECONDS + ${DEVICE_AB_SECONDS:-575}))
exec > >(tee "${OUT:-/tmp}/round82b.log") 2>&1
echo "commit: $(cat .devrun/commit)+worktree  csrc $(find csrc -type f | LC_ALL=C sort | xargs sha1sum | sha1sum | cut -c1-12)  $(date -u +%FT%TZ)"
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader
step build 300 build_extension || { print_summary "${steps_run[@]}"; exit 1; }
if step producer_tests 150 python3 -m pytest tests/test_dkdv_producer.py -x -q -p no:cacheprovider; then
  for v in 1 2 3; do
    step ab$v 120 python3 tools/ab_switch.py FIBSPARSE_DKDV_PRODUCER=$v --kernel dkdv --rounds 3 \
      --config dense,65536,32,8,128,integer --config dense,65536,8,8,64,integer 2>&1 | grep -v "_warn_once\|UserWarning"
  done
  export FIBSPARSE_DKDV_PRODUCER=1
  step racecheck 120 "${sanitizer_command[@]}" --tool racecheck python3 tools/sanitize_kernels.py 2>&1 | tail -40
fi
print_summary "${steps_run[@]}"
