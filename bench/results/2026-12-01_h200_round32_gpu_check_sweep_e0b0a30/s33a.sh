#!/bin/bash
# Round 32's GPU check at the commit after it (the kernels restructured): stage FA4's first wheels; build; the
# GPU check's test selection; memcheck and racecheck; per-kernel times of both backward routes.
cd "$(dirname "$0")/.."
mkdir -p /tmp/fa4 && cp .fa4a/* /tmp/fa4/
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
root=$PWD
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
python3 -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, "python", sys.version.split()[0])'
s=$SECONDS
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
timeout 260 python3 -m pytest -q -n 8 tests -k "cuda or gradcheck" -p no:cacheprovider -p no:benchmark > $OUT/tests.log 2>&1
echo "tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/tests.log | tail -12
sanitize="compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse"
for tool in memcheck racecheck; do
  timeout 100 $sanitize --tool $tool python3 tools/sanitize_kernels.py > $OUT/$tool.log 2>&1
  echo "=== $tool rc=$? $((SECONDS-s)) s"; tail -2 $OUT/$tool.log
done
(cd /tmp && timeout 60 python3 $root/.devrun/ab31.py --kernels 2>&1 | grep -v "UserWarning\|_warn_once" | tee $OUT/kernels.log)
gzip -f $OUT/build.log $OUT/tests.log
echo "done $((SECONDS-s)) s"
