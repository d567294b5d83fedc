#!/bin/bash
# Where the window alone's backward passes at MHA d 64 stall, per SASS instruction (64k, bf16).
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 OMP_NUM_THREADS=2
s=$SECONDS; python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1 || { tail -40 $OUT/build.log; exit 1; }
echo "build $((SECONDS-s)) s  commit $(cat .devrun/commit)"
ncu --version | tail -1
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader
for cfg in "65536 8 8 64 window mha64_window_64k" "65536 8 8 64 full mha64_full_64k"; do
  set -- $cfg
  timeout 150 ncu --clock-control none --kernel-name regex:"dq_mma|dkdv_mma" --section SourceCounters \
    --section WarpStateStats --section SpeedOfLight --section Occupancy -f -o $OUT/$6 \
    python3 .devrun/prof_cfg.py $1 $2 $3 $4 $5 > $OUT/$6.log 2>&1; echo "ncu $6 rc=$? $((SECONDS-s)) s"
  timeout 60 ncu -i $OUT/$6.ncu-rep --page details > $OUT/${6}_details.txt 2>&1
  timeout 100 ncu -i $OUT/$6.ncu-rep --page source --csv --print-source sass > $OUT/${6}_sass.csv 2> $OUT/${6}_sass.err
  echo "  sass rc=$? $(wc -c < $OUT/${6}_sass.csv) bytes"; head -c 300 $OUT/${6}_sass.err
  gzip -f $OUT/${6}_sass.csv
  python3 bench/results/2026-11-30_h200_backward_source_6df8875/summarize.py $OUT/${6}_sass.csv.gz > $OUT/${6}_summary.txt 2>&1
  head -40 $OUT/${6}_summary.txt
  rm -f $OUT/$6.ncu-rep
done
