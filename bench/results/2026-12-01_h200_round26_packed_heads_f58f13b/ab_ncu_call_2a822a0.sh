#!/bin/bash
# Build; tiles tests; A/B packed (tiles per block now counted in 64-query spans) against FIBSPARSE_HOPPER_PACK=0;
# then Nsight Compute per SASS instruction of the Hopper forward at 64k GQA 32/8 d 128, packed and not.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a OMP_NUM_THREADS=2
s=$SECONDS
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 1; }
echo "built $((SECONDS-s)) s  commit $(cat .devrun/commit)"
timeout 100 python3 -m pytest -q -n 8 tests/test_hopper.py -k "tiles or two_heads" -p no:cacheprovider -p no:benchmark 2>&1 | tail -3
for round in 1 2; do
  for side in off on; do
    unset FIBSPARSE_HOPPER_PACK; [[ $side == off ]] && export FIBSPARSE_HOPPER_PACK=0
    echo "=== round $round, $side  $(nvidia-smi --query-gpu=clocks.sm,temperature.gpu --format=csv,noheader)" | tee -a $OUT/ab.log
    (cd /tmp && timeout 100 python3 $OLDPWD/.devrun/ab26.py 2>&1 | tee -a $OUT/ab.log)
  done
done
for side in on off; do
  unset FIBSPARSE_HOPPER_PACK; [[ $side == off ]] && export FIBSPARSE_HOPPER_PACK=0
  name=gqa128_64k_pack_$side
  timeout 150 ncu --clock-control none --kernel-name regex:"fwd_hopper" --launch-skip 1 --launch-count 1 \
    --section SourceCounters --section WarpStateStats --section SpeedOfLight --section Occupancy \
    --section MemoryWorkloadAnalysis -f -o $OUT/$name python3 .devrun/prof26.py 65536 32 8 128 > $OUT/$name.log 2>&1
  echo "ncu $name rc=$? $((SECONDS-s)) s"
  timeout 60 ncu -i $OUT/$name.ncu-rep --page details > $OUT/${name}_details.txt 2>&1
  grep -E "Duration|Throughput|Hit Rate|Achieved Occupancy|Registers" $OUT/${name}_details.txt | head -20
  timeout 100 ncu -i $OUT/$name.ncu-rep --page source --csv --print-source sass > $OUT/${name}_sass.csv 2> $OUT/${name}_sass.err
  gzip -f $OUT/${name}_sass.csv
  python3 .devrun/summ26.py $OUT/${name}_sass.csv.gz > $OUT/${name}_summary.txt 2>&1
  head -32 $OUT/${name}_summary.txt
  rm -f $OUT/$name.ncu-rep
done
unset FIBSPARSE_HOPPER_PACK
gzip -f $OUT/build.log
