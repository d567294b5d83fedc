"""Each of our kernels' device time (us, torch.profiler, the mean over five
forward+backward steps) in the configurations the performance targets name:
GQA 32/8 and MHA 8/8, head_dim 128 and 64, 64k and 128k tokens, integer and
fractional offsets, a packed batch and the window alone; then the sum of
torch's own kernels in the step. A pass that moves shows here with its name,
where bench_sweep.py shows only the step's total.

    python tools/kernel_times.py            # bf16, window 128, Fibonacci offsets up to the sequence's length
"""
import torch
from torch.profiler import ProfilerActivity, profile

from fibsparse_ext import fibsparse_attn, fibsparse_attn_varlen, make_schedule

PACKED_LENGTHS = [16384, 8192, 12288, 4096, 16384, 8192]  # 65536 tokens, the longest 16k
# (layout, tokens, heads, kv heads, head_dim, offsets)
CONFIGS = [("dense", 65536, 32, 8, 128, "integer"), ("dense", 131072, 32, 8, 128, "integer"),
           ("dense", 65536, 32, 8, 128, "fractional"), ("dense", 65536, 8, 8, 128, "integer"),
           ("dense", 65536, 8, 8, 64, "integer"), ("dense", 131072, 8, 8, 64, "integer"),
           ("dense", 65536, 32, 8, 64, "integer"), ("packed", 65536, 32, 8, 128, "integer"),
           ("dense", 65536, 32, 8, 128, "window alone"), ("dense", 65536, 8, 8, 64, "window alone")]
WARMUP_STEPS, PROFILED_STEPS = 3, 5


def step_of(layout, tokens, heads, kv_heads, head_dim, kind):
    torch.manual_seed(0)
    packed = layout == "packed"
    longest = max(PACKED_LENGTHS) if packed else tokens
    # (tokens, heads, head_dim) packed, (1, tokens, heads, head_dim) dense: no view of the output
    # whose backward would add torch's copies to the step
    batch = () if packed else (1,)
    q = torch.randn(*batch, tokens, heads, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(*batch, tokens, kv_heads, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            for _ in range(2))
    grad = torch.randn_like(q)
    offsets = torch.tensor(make_schedule("fixed", num_layers=1, window=128, max_distance=longest).offsets(0),
                           dtype=torch.int32, device="cuda")
    if kind == "fractional":
        offsets = offsets.float() * 0.97
    elif kind == "window alone":
        offsets = offsets[:0]
    if packed:
        bounds = torch.tensor([0] + torch.tensor(PACKED_LENGTHS).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
        attend = lambda: fibsparse_attn_varlen(q, k, v, bounds, bounds, longest, longest, 128, offsets)
    else:
        attend = lambda: fibsparse_attn(q, k, v, 128, offsets)
    return lambda: torch.autograd.grad(attend(), [q, k, v], grad)


def main():
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  bf16, window 128")
    for config in CONFIGS:
        step = step_of(*config)
        for _ in range(WARMUP_STEPS):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(PROFILED_STEPS):
                step()
            torch.cuda.synchronize()
        layout, tokens, heads, kv_heads, head_dim, kind = config
        print(f"{layout} {tokens} tokens H={heads}/{kv_heads} d={head_dim} {kind}")
        timed = [e for e in prof.key_averages() if e.device_time_total > 0]
        ours = [e for e in timed if "fibsparse" in e.key]
        others = sorted((e for e in timed if "fibsparse" not in e.key), key=lambda e: -e.device_time_total)
        for e in ours:
            print(f"   {e.device_time_total / PROFILED_STEPS:8.1f} us  {e.key[:110]}")
        print(f"   {sum(e.device_time_total for e in ours) / PROFILED_STEPS:8.1f} us  all of ours, one step")
        # torch's own work in the step (fills, copies), which a step's time between events also holds
        print(f"   {sum(e.device_time_total for e in others) / PROFILED_STEPS:8.1f} us  all of torch's: " +
              ", ".join(f"{e.key[:40]} {e.device_time_total / PROFILED_STEPS:.1f}" for e in others[:3]))


if __name__ == "__main__":
    main()
