# What the device scripts (gpu_check.sh, device_ab.sh) share, sourced by them
# from the repository root: steps run under a time limit and recorded, their
# summary, the extension's build, the sanitizer's command and the test workers.

declare -A status   # step name -> "rc=N  Ss", or "skipped"
steps_run=()        # step names in the order they ran
# step_deadline: where set (a value of $SECONDS), each step's limit is cut to
# what is left before it, and a step with nothing left is skipped.

# step NAME SECONDS COMMAND...: runs COMMAND (a program or an exported
# function) under `timeout`, times it and records its status; returns its rc.
step() {
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  steps_run+=("$name")
  if [[ -n "${step_deadline:-}" ]]; then
    local left=$((step_deadline - SECONDS))
    ((limit > left)) && limit=$left
    if ((limit <= 0)); then
      status[$name]="skipped, the call's time is spent"
      echo; echo "=== $name: ${status[$name]}"
      return 1
    fi
  fi
  echo; echo "=== $name: $*"
  timeout -k 10 "$limit" bash -c '"$@"' "$name" "$@"
  rc=$?
  status[$name]="rc=$rc  $((SECONDS - start))s"
  echo "=== $name finished: ${status[$name]}"
  return "$rc"
}

# print_summary STEP...: each step's status (or "not run"); returns 1 if any
# failed, was skipped or did not run.
print_summary() {
  echo; echo "=== summary"
  local failed=0 name
  for name in "$@"; do
    echo "  $name: ${status[$name]:-not run}"
    [[ "${status[$name]:-rc=1}" == rc=0* ]] || failed=1
  done
  return $failed
}

build_extension() { python3 -m pip install --no-build-isolation --no-deps -e . -q; }
# Only our kernels are instrumented (torch's own would take minutes). torch's
# caching allocator is off under the sanitizers: inside one of its blocks, a
# read or write past the end of a tensor lands in memory the allocator owns,
# which memcheck does not report; with each tensor its own allocation, it does.
sanitizer_command=(env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse)
# find_pytest_workers: pytest_workers=(-n 8) where pytest-xdist imports;
# without it the suite runs serially (slower), and it says so.
find_pytest_workers() {
  pytest_workers=()
  if python3 -c "import xdist" 2>/dev/null; then
    pytest_workers=(-n 8)
  else
    echo "pytest-xdist not installed: tests run serially"
  fi
}
export -f build_extension
