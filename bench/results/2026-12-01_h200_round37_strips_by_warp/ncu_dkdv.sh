#!/bin/bash
# Round 37 profile: where the dk/dv and dq passes (stored dS, integer) spend their instructions and stalls, per SASS line,
# at 64k GQA 32/8 d 128 full pattern.
cd "$(dirname "$0")/../../.."  # the repository root
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 OMP_NUM_THREADS=2
s=$SECONDS; python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1 || { tail -40 $OUT/build.log; exit 1; }
echo "build $((SECONDS-s)) s  commit $(cat .devrun/commit)"
ncu --version | tail -1
timeout 240 ncu --clock-control none --kernel-name regex:"dkdv_mma|dq_from" --launch-count 2 --import-source yes \
  --section SourceCounters --section WarpStateStats --section LaunchStats --section Occupancy --section SpeedOfLight -f -o $OUT/gqa128_dkdv \
  python3 bench/results/2026-12-01_h200_round32_gpu_check_sweep_e0b0a30/prof_full.py > $OUT/prof.log 2>&1; echo "ncu rc=$? $((SECONDS-s)) s"
for view in sass; do
  timeout 120 ncu -i $OUT/gqa128_dkdv.ncu-rep --page source --csv --print-source $view > $OUT/gqa128_dkdv_$view.csv 2> $OUT/gqa128_dkdv_$view.err
  echo "  $view rc=$? $(wc -c < $OUT/gqa128_dkdv_$view.csv) bytes"; head -c 300 $OUT/gqa128_dkdv_$view.err
  gzip -f $OUT/gqa128_dkdv_$view.csv
done
timeout 60 ncu -i $OUT/gqa128_dkdv.ncu-rep --page details > $OUT/gqa128_dkdv_details.txt 2>&1
rm -f $OUT/gqa128_dkdv.ncu-rep
echo "done $((SECONDS-s)) s"
