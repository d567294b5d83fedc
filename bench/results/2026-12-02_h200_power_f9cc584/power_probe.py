"""Where the 64k GQA step's time over its kernels' sum goes: the step run back to back for
two seconds (per-step time from CUDA events over blocks of 10 steps) while nvidia-smi samples
the SM clock, power and throttle reasons every 20 ms; then one step at a time with 100 ms of
idle before each (events around each step); then the profiler's kernel sum over five steps.
PROBE_FA4=1: FlashAttention-4's sliding window (window_size=(127, 0)) at 64k GQA 32/8 d 128 and
MHA d 64 instead, beside our 64k GQA step again. Run from the repository's root."""
import subprocess, time, sys, statistics, torch
sys.path.insert(0, "bench")
from bench_attention import fwd_bwd
from timing import kernel_times_us
from fibsparse_ext import fibsparse_attn, make_schedule

print(torch.cuda.get_device_name(), torch.__version__, flush=True)
import os
CASES = [(65536, 32, 8, 128, "int"), (65536, 32, 8, 128, "none"), (65536, 8, 8, 64, "int")]
if os.environ.get("PROBE_FA4"):
    from flash_attn.cute import flash_attn_func
    def fa4(q, k, v):
        out = flash_attn_func(q, k, v, causal=True, window_size=(127, 0))
        return out[0] if isinstance(out, tuple) else out
    CASES = [(65536, 32, 8, 128, "fa4"), (65536, 32, 8, 128, "int"), (65536, 8, 8, 64, "fa4")]
for tokens, H, Hkv, d, kind in CASES:
    torch.manual_seed(0)
    q = torch.randn(1, tokens, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(1, tokens, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    grad = torch.randn_like(q)
    offs = torch.tensor(make_schedule("fixed", num_layers=1, window=128, max_distance=tokens).offsets(0),
                        dtype=torch.int32, device="cuda")
    if kind == "none": offs = offs[:0]
    attend = fa4 if kind == "fa4" else (lambda q, k, v: fibsparse_attn(q, k, v, 128, offs))
    step = fwd_bwd(attend, q, k, v, grad)
    for _ in range(5): step()
    torch.cuda.synchronize()
    # cool: one step at a time after 100 ms idle
    cool = []
    for _ in range(15):
        time.sleep(0.1)
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); step(); b.record(); torch.cuda.synchronize()
        cool.append(a.elapsed_time(b))
    # sustained: 2 s back to back, sampled
    smi = subprocess.Popen(["nvidia-smi", "--query-gpu=clocks.sm,power.draw,clocks_throttle_reasons.active",
                            "--format=csv,noheader,nounits", "-lms", "20"], stdout=subprocess.PIPE, text=True)
    blocks, t0 = [], time.time()
    while time.time() - t0 < 2.0:
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(10): step()
        b.record(); b.synchronize()
        blocks.append(a.elapsed_time(b) / 10)
    smi.terminate(); out = smi.communicate()[0].strip().splitlines()
    samples = [l.split(", ") for l in out if l.count(",") == 2]
    mhz = [float(s[0]) for s in samples]; watts = [float(s[1]) for s in samples]
    reasons = sorted({s[2] for s in samples})
    total = sum(us for _, us, _ in kernel_times_us(step, steps=5)) / 1000
    print(f"{tokens} H {H}/{Hkv} d {d} {kind}: step cool (100 ms idle before each) median {statistics.median(cool):.3f} ms "
          f"min {min(cool):.3f}; back to back: first block {blocks[0]:.3f}, median {statistics.median(blocks):.3f}, "
          f"last {blocks[-1]:.3f} ms over {len(blocks)} blocks of 10; SM MHz median {statistics.median(mhz):.0f} "
          f"min {min(mhz):.0f} max {max(mhz):.0f}; W median {statistics.median(watts):.0f} max {max(watts):.0f}; "
          f"throttle reasons seen {reasons}; kernels' sum {total:.3f} ms (profiler, 5 steps back to back)", flush=True)
    del q, k, v, grad
