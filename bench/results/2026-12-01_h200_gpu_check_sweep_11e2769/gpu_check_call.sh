#!/bin/bash
# The GPU check's quick test selection without stopping at the first failure, then its sanitizers, at one commit.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 OMP_NUM_THREADS=2
echo "commit $(cat .devrun/commit)  $(date -u +%FT%TZ)"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
s=$SECONDS; python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1 || { tail -20 $OUT/build.log; exit 1; }
echo "build $((SECONDS-s)) s"
s=$SECONDS
timeout 300 python3 -m pytest tests -q -n 8 -k "cuda or gradcheck" -p no:cacheprovider -p no:benchmark > $OUT/tests.log 2>&1
grep -E "passed|failed|FAILED|Error" $OUT/tests.log | tail -20; echo "tests $((SECONDS-s)) s"
gzip -f $OUT/tests.log
sanitize="compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse"
for tool in memcheck racecheck; do
  echo "=== $tool"; timeout 90 $sanitize --tool $tool python3 tools/sanitize_kernels.py 2>&1 | tail -3; echo "rc=${PIPESTATUS[0]}"
done
