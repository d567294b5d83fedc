#!/usr/bin/env bash
# An extrapolation sweep with one process per (variant, seed), several at a time
# on each GPU, then one last call that only loads the finished runs (their
# checkpoints hold their evaluations) and writes results.json, results.txt and
# results.png for the whole sweep.
#
#   GPUS=0,1 PER_GPU=4 bash tools/extrapolate_parallel.sh PRESET SEEDS VARIANTS OUT [extra arguments]
#   GPUS=1 PER_GPU=7 bash tools/extrapolate_parallel.sh small 0,1,2 \
#       fixed,learned,stagger,coprime,pow2-fixed,pow2-stagger,dense runs/small
#
# Why: the small presets leave most of a GPU idle (each step is a few hundred
# short kernels), so several runs on one GPU add up to more tokens per second
# than one. The tokens/s a run records is then its share of a shared GPU, not
# what it would get alone. The runs are deterministic, so sharing a GPU
# changes no result. Each run's log is OUT/logs/VARIANT.seedS.log; rerunning
# resumes every unfinished run from its checkpoint. Paths are the caller's:
# the package is imported from the tree this script belongs to.
set -uo pipefail
if (( $# < 4 )); then
  echo "usage: GPUS=0,1 PER_GPU=4 $0 PRESET SEEDS VARIANTS OUT [extra arguments]" >&2
  exit 2
fi
preset=$1 seeds=$2 variants=$3 out=$4; shift 4
extra=("$@")
root=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

gpu_text=${GPUS:-0}
[[ "$gpu_text" =~ ^[0-9]+(,[0-9]+)*$ ]] || {
  echo "GPUS must be comma-separated GPU indices, such as 0,1; got '$gpu_text'" >&2; exit 2; }
IFS=, read -ra gpus <<< "$gpu_text"
if [[ $(printf '%s\n' "${gpus[@]}" | sort -u | wc -l) -ne ${#gpus[@]} ]]; then
  echo "GPUS names a GPU twice: '$gpu_text' (its runs would train the same checkpoints at once)" >&2; exit 2
fi
per_gpu=${PER_GPU:-4}
[[ "$per_gpu" =~ ^[1-9][0-9]*$ ]] || { echo "PER_GPU must be a positive integer, got '$per_gpu'" >&2; exit 2; }
# The experiment checks the preset, variants, seeds and extra arguments (twice-named values
# included) before anything runs; its message names what it refused.
python3 -m fibsparse_ext.lm.experiments.extrapolate --preset "$preset" --schedules "$variants" --seeds "$seeds" \
  --out "$out" "${extra[@]}" --dry-run || exit 2
IFS=, read -ra seed_list <<< "$seeds"
IFS=, read -ra variant_list <<< "$variants"
mkdir -p "$out/logs"

# Seed-major, dealt round-robin over the GPUs, so that the first seeds finish first.
declare -A jobs_of_gpu
i=0
for seed in "${seed_list[@]}"; do
  for variant in "${variant_list[@]}"; do
    [[ -n "${seed// }" && -n "${variant// }" ]] || continue
    gpu=${gpus[$(( i % ${#gpus[@]} ))]}
    jobs_of_gpu[$gpu]+="${variant// } ${seed// }"$'\n'
    i=$(( i + 1 ))
  done
done

run_one() {  # run_one GPU VARIANT SEED: one run (no results files), its log, one line when it ends
  local gpu=$1 variant=$2 seed=$3 start=$SECONDS
  CUDA_VISIBLE_DEVICES=$gpu python3 -m fibsparse_ext.lm.experiments.extrapolate --preset "$preset" \
    --schedules "$variant" --seeds "$seed" --out "$out" --runs-only "${extra[@]}" \
    > "$out/logs/$variant.seed$seed.log" 2>&1
  local rc=$?
  echo "$(date -u +%H:%M:%S) gpu $gpu  $variant seed $seed  rc=$rc  $(( SECONDS - start ))s"
  (( rc == 0 )) || echo "$variant seed $seed (rc=$rc, $out/logs/$variant.seed$seed.log)" >> "$out/logs/failed"
}

run_queue() {  # run_queue GPU: this GPU's runs, PER_GPU at a time
  local gpu=$1 variant seed
  while read -r variant seed; do
    [[ -n "$variant" ]] || continue
    while (( $(jobs -rp | wc -l) >= per_gpu )); do wait -n; done
    run_one "$gpu" "$variant" "$seed" &
  done <<< "${jobs_of_gpu[$gpu]:-}"
  wait
}

rm -f "$out/logs/failed"
echo "$(date -u +%H:%M:%S) $preset: $i runs over GPU(s) ${gpus[*]}, $per_gpu at a time on each; logs in $out/logs"
started=$SECONDS
for gpu in "${gpus[@]}"; do run_queue "$gpu" & done
wait
echo "$(date -u +%H:%M:%S) all runs ended after $(( SECONDS - started ))s"
if [[ -s "$out/logs/failed" ]]; then
  echo "failed runs (no results files were written; rerunning resumes them):"; cat "$out/logs/failed"
  exit 1
fi
# Every run is finished and evaluated: this call only loads them and writes the results files.
CUDA_VISIBLE_DEVICES=${gpus[0]} python3 -m fibsparse_ext.lm.experiments.extrapolate --preset "$preset" \
  --schedules "$variants" --seeds "$seeds" --out "$out" "${extra[@]}"
