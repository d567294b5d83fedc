#!/usr/bin/env bash
# One A/B round on the GPU machine in one call: build this tree, time a switch's
# kernels against the default (tools/ab_switch.py, gradients compared bit for
# bit), and on request check what would land: a patch applied and rebuilt, the
# sanitizers over every kernel, a selection of tests, each kernel's time.
#
#   bash tools/device_ab.sh [options] -- SWITCH --kernel K --config C ... [--rounds N] [-- SWITCH2 ...]
#
# Everything after `--` goes to tools/ab_switch.py as it is; a further `--`
# starts another A/B of the same build (another switch), run after the first,
# so no `--` reaches ab_switch.py itself. Each A/B may take up to 300 s of the
# call's DEVICE_AB_SECONDS (below), which the checks after them share too.
# Options:
#   --log NAME        the log's name under $OUT (default ab.log)
#   --landing PATCH   after the A/B, apply PATCH (git apply; the switch taken out,
#                     say), print the csrc digest and rebuild: the checks below
#                     then run on the landed tree, and the patch is reverted at
#                     the end. Without it they run on the A/B's build.
#   --sanitize        racecheck, memcheck and synccheck over tools/sanitize_kernels.py
#   --tests EXPR      python -m pytest tests -k EXPR (8 workers where xdist imports)
#   --kernel-times    tools/kernel_times.py
#   --check-env NAME=VALUE
#                     set NAME=VALUE for the sanitizers, tests and kernel times
#                     only, not for the A/B (whose default side is the
#                     inherited environment): a switch's kernel checked in the
#                     same call that times it. May be given more than once.
# The log starts with the commit (FIBSPARSE_COMMIT; git's HEAD is only as fresh
# as the copy's .git), a digest of csrc/ (so a log names the exact sources it
# built), the GPU and torch, and ends with each step's exit status and seconds.
# Every step runs under a time limit cut to what is left of DEVICE_AB_SECONDS
# (default 570, under the device's 600 a command); a step with no time left is
# skipped and counted as failed. A failed build, or a landing patch that does
# not apply, stops the call: what follows would measure the wrong code.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
source tools/device_steps.sh

usage="options: --log NAME, --landing PATCH, --sanitize, --tests EXPR, --kernel-times, --check-env NAME=VALUE; then -- and tools/ab_switch.py's arguments, and -- before each further A/B's"
log=ab.log landing="" sanitize=0 tests="" kernel_times=0 check_env=()
while [[ $# -gt 0 && "$1" != "--" ]]; do
  case "$1" in
    --log | --landing | --tests | --check-env)
      if [[ $# -lt 2 ]]; then echo "device_ab.sh: $1 needs a value ($usage)"; exit 2; fi
      case "$1" in
        --log) log="$2" ;;
        --landing) landing="$2" ;;
        --tests) tests="$2" ;;
        --check-env)
          if [[ ! "$2" =~ ^[A-Za-z_][A-Za-z0-9_]*=.*$ ]]; then
            echo "device_ab.sh: --check-env takes NAME=VALUE, got '$2'"
            exit 2
          fi
          check_env+=("$2") ;;
      esac
      shift 2 ;;
    --sanitize) sanitize=1; shift ;;
    --kernel-times) kernel_times=1; shift ;;
    *) echo "device_ab.sh: unknown option '$1' ($usage)"; exit 2 ;;
  esac
done
if [[ $# -lt 2 || "$1" != "--" ]]; then
  echo "device_ab.sh: give tools/ab_switch.py's arguments after --, e.g. -- FIBSPARSE_X=0 --kernel dkdv --config dense,65536,32,8,128,integer"
  exit 2
fi
shift
previous="--"
for arg in "$@" --; do
  if [[ "$arg" == "--" && "$previous" == "--" ]]; then
    echo "device_ab.sh: an empty group of A/B arguments (two '--' in a row, or one at the end)"
    exit 2
  fi
  previous=$arg
done
if [[ -n "$landing" && ! -f "$landing" ]]; then
  echo "device_ab.sh: --landing must name a patch file, got '$landing'"
  exit 2
fi

export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} MAX_JOBS=${MAX_JOBS:-16}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
step_deadline=$((SECONDS + ${DEVICE_AB_SECONDS:-570}))  # every step's limit is cut to it (device_steps.sh)
exec > >(tee "${OUT:-/tmp}/$log") 2>&1
tee_pid=$!

landing_failure=""  # what went wrong with the landing patch, if anything
# finish: the summary of the steps that ran (and the landing's failure), then
# the call's status: 1 if any of them failed.
finish() {
  print_summary "${steps_run[@]}"
  local failed=$?
  if [[ -n "$landing_failure" ]]; then
    echo "  landing: $landing_failure"
    failed=1
  fi
  exec >&- 2>&-
  wait "$tee_pid"
  exit "$failed"
}
digest() {
  find csrc -type f \( -name '*.cu' -o -name '*.cuh' -o -name '*.h' -o -name '*.cpp' \) | LC_ALL=C sort |
    xargs sha1sum | sha1sum | cut -c1-12
}
filtered_ab() {
  python3 tools/ab_switch.py "$@" 2>&1 | grep -v "UserWarning: Warning: Profiler\|_warn_once"
  return "${PIPESTATUS[0]}"
}
# The steps run under `timeout` in a child bash, which sees these through the environment.
export -f filtered_ab

echo "commit: ${FIBSPARSE_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}  csrc $(digest)  $(date -u +%Y-%m-%dT%H:%M:%SZ)"
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__)'

step build 300 build_extension || finish
# One A/B for each group of arguments between the `--`s.
ab_args=() ab_count=0
for arg in "$@" --; do
  if [[ "$arg" == "--" ]]; then
    ab_count=$((ab_count + 1))
    step "ab$([[ $ab_count -gt 1 ]] && echo "$ab_count")" 300 filtered_ab "${ab_args[@]}"
    ab_args=()
  else
    ab_args+=("$arg")
  fi
done
if [[ -n "$landing" ]]; then
  if ! git apply "$landing"; then
    landing_failure="the patch did not apply"
    finish
  fi
  echo "landing applied: csrc $(digest)"
  if ! step build_landing 300 build_extension; then
    git apply -R "$landing" || landing_failure="the patch did not revert"
    finish
  fi
fi
# The checks below run with --check-env's settings.
if [[ ${#check_env[@]} -gt 0 ]]; then
  export "${check_env[@]}"
  echo "checks run with: ${check_env[*]}"
fi
if [[ $sanitize == 1 ]]; then
  for tool in racecheck memcheck synccheck; do
    step "$tool" 150 "${sanitizer_command[@]}" --tool "$tool" python3 tools/sanitize_kernels.py
  done
fi
if [[ -n "$tests" ]]; then
  find_pytest_workers
  step tests 420 python3 -m pytest tests -q ${pytest_workers[@]+"${pytest_workers[@]}"} -k "$tests" \
    -p no:cacheprovider -p no:benchmark
fi
if [[ $kernel_times == 1 ]]; then
  step kernel_times 120 python3 tools/kernel_times.py
fi
if [[ -n "$landing" ]]; then
  if git apply -R "$landing"; then
    echo "landing reverted"
  else
    landing_failure="the patch did not revert"
  fi
fi
finish
