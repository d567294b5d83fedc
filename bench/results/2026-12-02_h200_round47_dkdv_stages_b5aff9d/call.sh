#!/bin/bash
# Round 47 (call B, after .fa4a's copy): build the change and aa6802f side by side, with FA4's wheels; each build's
# kernel times (ab46.py --kernels); the GPU check's test selection on the change and the bad-boundaries test on
# aa6802f; memcheck, racecheck and synccheck; bench_sweep.py --fair with FA4.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 TORCH_CUDA_ARCH_LIST=9.0a
root=$PWD
s=$SECONDS
echo "=== $(date -u +%FT%TZ) commit $(cat .devrun/commit) against aa6802f"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
python3 -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, "python", sys.version.split()[0])'
rm -rf /tmp/head && cp -r .devrun/base47 /tmp/head
(cd /tmp/head && MAX_JOBS=6 python3 setup.py build_ext --inplace -q > $OUT/build_head.log 2>&1; echo "aa6802f built rc=$? $((SECONDS-s)) s") &
(cp .fa4b/* /tmp/fa4/ && cd /tmp/fa4 && cat cu13.part.* > "$(cat BIG_WHEEL_NAME)" && rm cu13.part.* BIG_WHEEL_NAME && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/fa4/*.whl > /dev/null 2>&1; echo "fa4 rc=$? $((SECONDS-s)) s") &
MAX_JOBS=10 python3 -m pip install --no-build-isolation --no-deps -e . -q > $OUT/build.log 2>&1; echo "change built rc=$? $((SECONDS-s)) s"
wait
for side in head change; do
  case $side in head) pp=/tmp/head;; change) pp=$root;; esac
  echo "=== kernels, $side" | tee -a $OUT/kernels.log
  (cd /tmp && PYTHONPATH=$pp timeout 40 python3 $root/.devrun/ab46.py --kernels 2>&1 | grep -v -i warn | grep -E "^(dense|packed)|dkdv" | tee -a $OUT/kernels.log)
done
timeout 200 python3 -m pytest -q -n 8 tests -k "cuda or gradcheck or hopper" -p no:cacheprovider -p no:benchmark > $OUT/gpu_tests.log 2>&1
echo "GPU tests rc=$? $((SECONDS-s)) s"; grep -E "passed|failed|FAILED|Error" $OUT/gpu_tests.log | tail -8; gzip -f $OUT/gpu_tests.log
mkdir -p /tmp/headtests && cp -r tests /tmp/headtests/ && (cd /tmp/headtests && PYTHONPATH=/tmp/head timeout 60 python3 -m pytest -q tests -k "bad_lengths_stop_the_cuda_kernels or packed_backward_from_stored" -p no:cacheprovider -p no:benchmark > $OUT/head_boundaries_tests.log 2>&1; echo "aa6802f boundaries tests rc=$? $((SECONDS-s)) s"; tail -2 $OUT/head_boundaries_tests.log; PYTHONPATH=/tmp/head python3 -c "import fibsparse_ext; print('from', fibsparse_ext.__file__)")
for tool in memcheck racecheck synccheck; do
  timeout 100 compute-sanitizer --error-exitcode 1 --kernel-name kns=fibsparse --tool $tool python3 tools/sanitize_kernels.py > $OUT/$tool.log 2>&1; echo "$tool rc=$? $((SECONDS-s)) s"; tail -1 $OUT/$tool.log
done
if [[ $((SECONDS-s)) -lt 400 ]]; then
FIBSPARSE_COMMIT=$(cat .devrun/commit) PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages timeout 175 python3 bench/bench_sweep.py --fair --out $OUT/sweep_fair > $OUT/sweep_fair.log 2>&1
echo "sweep rc=$? $((SECONDS-s)) s"; grep -E "^B=1|^\[|fwd/fwd\+bwd ms" $OUT/sweep_fair.log | sed 's/^.*\(B=1\)/\1/' | cut -c1-200 | head -40
fi
gzip -f $OUT/build*.log
echo "done $((SECONDS-s)) s"
