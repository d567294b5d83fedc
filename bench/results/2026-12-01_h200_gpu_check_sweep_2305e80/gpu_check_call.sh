#!/bin/bash
# Build; the GPU check's quick selection; memcheck and racecheck; one A/B round (FIBSPARSE_HOPPER_PACK=0, default).
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, "python", sys.version.split()[0])'
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 1; }
echo "built $((SECONDS-s)) s"
timeout 240 python3 -m pytest -q -n 8 tests -k "cuda or gradcheck" -p no:cacheprovider -p no:benchmark > $OUT/tests.log 2>&1
echo "tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/tests.log | tail -12
sanitize="compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse"
for tool in memcheck racecheck; do
  timeout 80 $sanitize --tool $tool python3 tools/sanitize_kernels.py > $OUT/$tool.log 2>&1
  echo "=== $tool rc=$? $((SECONDS-s)) s"; tail -2 $OUT/$tool.log
done
for side in off on; do
  unset FIBSPARSE_HOPPER_PACK; [[ $side == off ]] && export FIBSPARSE_HOPPER_PACK=0
  echo "=== $side  $(nvidia-smi --query-gpu=clocks.sm,temperature.gpu --format=csv,noheader)" | tee -a $OUT/ab.log
  (cd /tmp && timeout 100 python3 $OLDPWD/.devrun/ab26.py 2>&1 | tee -a $OUT/ab.log)
done
gzip -f $OUT/build.log $OUT/tests.log
