#!/usr/bin/env bash
# The GPU check, in one call on the device machine: build the extension
# (sm_90a, --no-build-isolation), run the whole test suite including the CUDA
# tests, compute-sanitizer over every kernel, then the benchmark; print a
# summary. Output goes to stdout and to $OUT/gpu_check.log when OUT is set.
#
#   FIBSPARSE_COMMIT=$(git rev-parse HEAD) bash tools/gpu_check.sh [MODE]
#
# MODE: none for all of it; --quick for the CUDA tests and a short bench;
# or the measurements in two calls, each about five minutes on an H200, for
# machines lent ten minutes a call (each call builds the extension first):
#   --peers      the fair sweep against the sliding-window peers (FlashAttention-4
#                where it imports), each kernel's time, and three sanitizers;
#   --gpu-tests  the CUDA, gradcheck and Hopper tests.
set -uo pipefail
# Every path below is relative to the repository root, wherever this is called from.
cd "$(dirname "$0")/.."
source tools/device_steps.sh
export PYTHONUNBUFFERED=1
mode=${1:-full}
case "$mode" in
  full|--quick|--peers|--gpu-tests) ;;
  *) echo "gpu_check.sh: MODE must be --quick, --peers or --gpu-tests (or none for all), got '$mode'"; exit 2 ;;
esac
quick=0; [[ "$mode" == --quick ]] && quick=1
log=${OUT:-/tmp}/gpu_check.log
exec > >(tee "$log") 2>&1

echo "=== fibsparse_ext GPU check  $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "commit: ${FIBSPARSE_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, "python", sys.version.split()[0], "L2 bytes", torch.cuda.get_device_properties(0).L2_cache_size)'
nvcc --version | tail -1

export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} MAX_JOBS=${MAX_JOBS:-$(nproc)}
step build 300 build_extension
[[ "${status[build]}" == rc=0* ]] || { echo "build failed: nothing else can run"; exit 1; }
step self_check 60 python3 -m fibsparse_ext
find_pytest_workers
summary() { print_summary "$@"; exit; }  # summary STEP...: print, then exit 1 if any failed or did not run

# The two-call modes end here (summary exits); the whole check and --quick go on below.
case "$mode" in
  --peers)
    # 240 s: FlashAttention-4 JIT-compiles its kernels on the sweep's first calls.
    step fair_sweep 240 python3 bench/bench_sweep.py --fair
    step kernel_times 90 python3 tools/kernel_times.py
    # With torch's caching allocator off (sanitizer_command), racecheck takes
    # ~70 s on an H200 and the other two under 15; the limits leave room for
    # the driver's allocations.
    for tool in memcheck racecheck synccheck; do
      step $tool 150 "${sanitizer_command[@]}" --tool $tool python3 tools/sanitize_kernels.py
    done
    summary build self_check fair_sweep kernel_times memcheck racecheck synccheck ;;
  --gpu-tests)
    OMP_NUM_THREADS=2 step gpu_tests 420 python3 -m pytest tests -q "${pytest_workers[@]}" -k "cuda or gradcheck or hopper" \
      -p no:cacheprovider -p no:benchmark
    summary build self_check gpu_tests ;;
esac
if (( quick )); then
  # No -x: one failing test must not hide the rest of the record (the quick
  # selection takes about 100 s on an H200 whether or not one fails).
  OMP_NUM_THREADS=2 step tests 240 python3 -m pytest tests -q "${pytest_workers[@]}" -k "cuda or gradcheck" -p no:cacheprovider -p no:benchmark
else
  # The fuzzer runs a larger grid here than in CI: every CUDA dtype, both kernel families.
  FIBSPARSE_FUZZ_CASES=${FIBSPARSE_FUZZ_CASES:-4000} OMP_NUM_THREADS=2 step tests 600 python3 -m pytest tests -q "${pytest_workers[@]}" -p no:cacheprovider -p no:benchmark
fi
step memcheck 150 "${sanitizer_command[@]}" --tool memcheck python3 tools/sanitize_kernels.py
step racecheck 150 "${sanitizer_command[@]}" --tool racecheck python3 tools/sanitize_kernels.py
if (( quick )); then
  step bench 110 python3 bench/bench_attention.py --quick
else
  step bench 110 python3 bench/bench_attention.py
  # 300 s: FlashAttention-4, where installed, JIT-compiles its kernels on the sweep's first calls.
  step sweep 300 python3 bench/bench_sweep.py --quick
  step decode 120 python3 bench/bench_decode.py
  step host_path 60 python3 bench/host_path.py
  step step_profile 90 python3 tools/profile_step.py 16384
  # A transformers model's training step at 16k tokens: fibsparse vs sdpa vs flex_attention.
  step transformers 240 python3 bench/bench_transformers.py
fi
# Context parallelism over NCCL, where two GPUs are visible (its tests ran above);
# counted by torch, so that CUDA_VISIBLE_DEVICES can keep the check to one GPU.
gpus=$(python3 -c 'import torch; print(torch.cuda.device_count())')
if (( gpus >= 2 )); then
  step context_parallel 180 python3 -m torch.distributed.run --nproc-per-node 2 bench/bench_context_parallel.py
fi

steps="build self_check tests memcheck racecheck bench"
(( quick )) || steps="$steps sweep decode host_path step_profile transformers"
(( gpus >= 2 )) && steps="$steps context_parallel"
summary $steps
