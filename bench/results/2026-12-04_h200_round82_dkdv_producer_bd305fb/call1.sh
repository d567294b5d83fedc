#!/usr/bin/env bash
# Round 82's first call: build, the producer's own tests (a hang shows as a timeout), then the A/B and the sanitizers with the producer on.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
source tools/device_steps.sh
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 OMP_NUM_THREADS=2
step_deadline=$((SECONDS + ${DEVICE_AB_SECONDS:-575}))
exec > >(tee "${OUT:-/tmp}/round82.log") 2>&1
echo "commit: $(cat .devrun/commit)+worktree  csrc $(find csrc -type f | LC_ALL=C sort | xargs sha1sum | sha1sum | cut -c1-12)  $(date -u +%FT%TZ)"
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__)'
step build 300 build_extension || { print_summary "${steps_run[@]}"; exit 1; }
if step producer_tests 150 python3 -m pytest tests/test_dkdv_producer.py -x -q -p no:cacheprovider; then
  step ab 300 python3 tools/ab_switch.py FIBSPARSE_DKDV_PRODUCER=1 --kernel dkdv --rounds 5 \
    --config dense,65536,32,8,128,integer --config dense,131072,32,8,128,integer \
    --config dense,65536,8,8,64,integer --config dense,131072,8,8,64,integer
  export FIBSPARSE_DKDV_PRODUCER=1
  for tool in racecheck memcheck synccheck; do
    step "$tool" 120 "${sanitizer_command[@]}" --tool "$tool" python3 tools/sanitize_kernels.py
  done
fi
print_summary "${steps_run[@]}"
