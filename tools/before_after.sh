#!/usr/bin/env bash
# Speed of two commits side by side in one device call: builds each in its own
# worktree and runs `bench_sweep.py --quick --no-peers` for both, alternating twice, so
# that a difference between them can be told from run-to-run noise.
#
#   bash tools/before_after.sh BEFORE [AFTER]
# BEFORE and AFTER are commits, or folders holding a source tree (`git archive`
# of a commit, for a machine without the repository's history); AFTER defaults
# to the work tree.
set -uo pipefail
before=$1; after=${2:-}
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} MAX_JOBS=${MAX_JOBS:-$(nproc)}
root=$(cd "$(dirname "$0")/.." && pwd)  # the repository this script belongs to
build() {  # build DIR: the extension in place, without installing it
  (cd "$1" && python3 setup.py build_ext --inplace -q > /tmp/build_$(basename "$1").log 2>&1) || {
    echo "build of $1 failed"; tail -20 /tmp/build_$(basename "$1").log; exit 1; }
}
checkout() {  # checkout COMMIT_OR_FOLDER DIR
  if [[ -d "$1" ]]; then rm -rf "$2" && cp -r "$1" "$2"; else git worktree add -f "$2" "$1" -q; fi
}
checkout "$before" /tmp/before && build /tmp/before
if [[ -n "$after" ]]; then checkout "$after" /tmp/after && build /tmp/after; after_dir=/tmp/after
else build "$root"; after_dir=$root; fi
for round in 1 2; do
  for side in before after; do
    dir=/tmp/before; [[ $side == after ]] && dir=$after_dir
    echo "=== round $round, $side ($dir)"
    (cd "$dir" && PYTHONPATH="$dir" python3 -c "import fibsparse_ext; print('module:', fibsparse_ext.__file__)" &&
     PYTHONPATH="$dir" python3 "$root/bench/bench_sweep.py" --quick --no-peers 2>&1 | tail -8)
  done
done
