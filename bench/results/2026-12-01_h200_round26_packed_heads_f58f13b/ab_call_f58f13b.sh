#!/bin/bash
# One build; new tests; rounds alternate FIBSPARSE_HOPPER_PACK=0, the default, and the default with 4 tiles per block.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
s=$SECONDS
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 1; }
echo "built $((SECONDS-s)) s  commit $(cat .devrun/commit)"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
echo "=== test_hopper.py"
s=$SECONDS
timeout 150 python3 -m pytest -q -n 8 tests/test_hopper.py tests/test_kernels.py -k "hopper or gqa or window_alone" -p no:cacheprovider -p no:benchmark > $OUT/hopper_tests.log 2>&1
grep -E "passed|failed|FAILED|Error" $OUT/hopper_tests.log | tail -15; echo "tests $((SECONDS-s)) s"
orders=("off on on4" "on4 on off" "off on on4")
for round in 1 2 3; do
  for side in ${orders[$((round-1))]}; do
    echo "=== round $round, $side  $(nvidia-smi --query-gpu=clocks.sm,temperature.gpu --format=csv,noheader)" | tee -a $OUT/ab.log
    unset FIBSPARSE_HOPPER_PACK FIBSPARSE_HOPPER_TILES
    [[ $side == off ]] && export FIBSPARSE_HOPPER_PACK=0
    [[ $side == on4 ]] && export FIBSPARSE_HOPPER_TILES=4
    (cd /tmp && timeout 100 python3 $OLDPWD/.devrun/ab26.py 2>&1 | tee -a $OUT/ab.log)
  done
done
unset FIBSPARSE_HOPPER_PACK FIBSPARSE_HOPPER_TILES
gzip -f $OUT/build.log
