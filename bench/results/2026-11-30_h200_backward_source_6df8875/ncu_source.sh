#!/bin/bash
# Where in the source the backward passes stall and make excess sectors: 128k MHA d64 window alone, 128k GQA 32/8 d128 full.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 OMP_NUM_THREADS=2
s=$SECONDS; python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1 || { tail -40 $OUT/build.log; exit 1; }
echo "build $((SECONDS-s)) s  commit $(cat .devrun/commit)"
ncu --version | tail -1
for cfg in "131072 8 8 64 window mha64_window" "131072 32 8 128 full gqa128_full"; do
  set -- $cfg
  timeout 200 ncu --clock-control none --kernel-name regex:"dq_mma|dkdv_mma" --import-source yes \
    --section SourceCounters --section WarpStateStats -f -o $OUT/$6 \
    python3 .devrun/prof_cfg.py $1 $2 $3 $4 $5 > $OUT/$6.log 2>&1; echo "ncu $6 rc=$? $((SECONDS-s)) s"
  for view in cuda sass; do
    timeout 120 ncu -i $OUT/$6.ncu-rep --page source --csv --print-source $view > $OUT/${6}_$view.csv 2> $OUT/${6}_$view.err
    echo "  $view rc=$? $(wc -c < $OUT/${6}_$view.csv) bytes"; head -c 300 $OUT/${6}_$view.err
  done
  gzip -f $OUT/${6}_sass.csv
  ls -la $OUT/$6.ncu-rep
done
