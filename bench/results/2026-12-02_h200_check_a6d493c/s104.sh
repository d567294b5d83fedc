#!/bin/bash
# The check after round 58, first of two calls (after .fa4a's copy): build the commit with FA4's wheels;
# bench_sweep.py --fair with FA4; the kernel times (ab46.py --kernels); memcheck, racecheck and synccheck.
# The second call (s105.sh) runs the GPU check's test selection on the same build.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 TORCH_CUDA_ARCH_LIST=9.0a
root=$PWD
s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
python3 -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, "python", sys.version.split()[0], "L2 bytes", torch.cuda.get_device_properties(0).L2_cache_size)'
(cp .fa4b/* /tmp/fa4/ && cd /tmp/fa4 && cat cu13.part.* > "$(cat BIG_WHEEL_NAME)" && rm cu13.part.* BIG_WHEEL_NAME && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/fa4/*.whl > /dev/null 2>&1; echo "fa4 rc=$? $((SECONDS-s)) s") &
MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "built rc=$? $((SECONDS-s)) s"
wait
FIBSPARSE_COMMIT=$(cat .devrun/commit) PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages timeout 190 python3 bench/bench_sweep.py --fair --out $OUT/sweep_fair > $OUT/sweep_fair.log 2>&1
echo "sweep rc=$? $((SECONDS-s)) s"; grep -E "^B=1|^\[|fwd/fwd\+bwd ms" $OUT/sweep_fair.log | sed 's/^.*\(B=1\)/\1/' | cut -c1-200 | head -40
rm -rf $OUT/sweep_fair
(cd /tmp && timeout 45 python3 $root/.devrun/ab46.py --kernels 2>&1 | grep -v -i warn | tee $OUT/kernels.log | grep -E "^(dense|packed)|dkdv|fwd_hopper")
for tool in memcheck racecheck synccheck; do
  if [[ $((SECONDS-s)) -lt 480 ]]; then
    timeout 100 compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse --tool $tool python3 tools/sanitize_kernels.py > $OUT/$tool.log 2>&1; echo "$tool rc=$? $((SECONDS-s)) s"; tail -1 $OUT/$tool.log
  fi
done
gzip -f $OUT/build*.log
echo "done $((SECONDS-s)) s"
