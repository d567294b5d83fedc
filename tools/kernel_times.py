"""Each of our kernels' device time (us, torch.profiler, the mean over five
forward+backward steps) in the configurations the performance targets name:
GQA 32/8 and MHA 8/8, head_dim 128 and 64, 64k and 128k tokens, integer and
fractional offsets, a packed batch and the window alone; then the sum of
torch's own kernels in the step. A pass that moves shows here with its name,
where bench_sweep.py shows only the step's total.

    python tools/kernel_times.py            # bf16, window 128, Fibonacci offsets up to the sequence's length
"""
import sys
from pathlib import Path

import torch

# The step is timed as the benchmarks build it, with their own helpers.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from bench_attention import fwd_bwd  # noqa: E402
from fibsparse_ext import fibsparse_attn, fibsparse_attn_varlen, make_schedule  # noqa: E402
from run_commit import measured_commit  # noqa: E402
from timing import kernel_times_us  # noqa: E402

PACKED_LENGTHS = [16384, 8192, 12288, 4096, 16384, 8192]  # 65536 tokens, the longest 16k
# What a configuration's layout and offsets may be (inputs_of)
LAYOUTS = ("dense", "packed")
KINDS = ("integer", "fractional", "whole positions", "window alone")
# (layout, tokens, heads, kv heads, head_dim, offsets)
CONFIGS = [("dense", 65536, 32, 8, 128, "integer"), ("dense", 131072, 32, 8, 128, "integer"),
           ("dense", 65536, 32, 8, 128, "fractional"), ("dense", 65536, 8, 8, 128, "integer"),
           ("dense", 65536, 8, 8, 64, "integer"), ("dense", 65536, 8, 8, 64, "fractional"),
           ("dense", 131072, 8, 8, 64, "integer"),
           ("dense", 65536, 32, 8, 64, "integer"), ("packed", 65536, 32, 8, 128, "integer"),
           ("dense", 65536, 32, 8, 128, "window alone"), ("dense", 65536, 8, 8, 64, "window alone")]
WARMUP_STEPS, PROFILED_STEPS = 3, 5


def inputs_of(layout, tokens, heads, kv_heads, head_dim, kind):
    """(attend, q, k, v, grad) of a configuration: attend(q, k, v) is our attention
    call on it, grad the gradient of its output (tools/ab_switch.py uses them too)."""
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
    elif kind == "whole positions":
        # Float positions that are all whole: the fractional kernels, every strip's fraction 0.
        offsets = offsets.float()
    elif kind == "window alone":
        offsets = offsets[:0]
    if packed:
        bounds = torch.tensor([0] + torch.tensor(PACKED_LENGTHS).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
        def attend(q, k, v):
            return fibsparse_attn_varlen(q, k, v, bounds, bounds, longest, longest, 128, offsets)
    else:
        def attend(q, k, v):
            return fibsparse_attn(q, k, v, 128, offsets)
    return attend, q, k, v, grad


def step_of(*config):
    return fwd_bwd(*inputs_of(*config))


def main():
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  commit {measured_commit()}  bf16, window 128")
    for config in CONFIGS:
        step = step_of(*config)
        for _ in range(WARMUP_STEPS):
            step()
        torch.cuda.synchronize()
        kernels = kernel_times_us(step, PROFILED_STEPS)
        layout, tokens, heads, kv_heads, head_dim, kind = config
        print(f"{layout} {tokens} tokens H={heads}/{kv_heads} d={head_dim} {kind}")
        ours = [(key, us) for key, us, _ in kernels if "fibsparse" in key]
        others = sorted(((key, us) for key, us, _ in kernels if "fibsparse" not in key), key=lambda kernel: -kernel[1])
        for key, us in ours:
            print(f"   {us:8.1f} us  {key[:110]}")
        print(f"   {sum(us for _, us in ours):8.1f} us  all of ours, one step")
        # torch's own work in the step (fills, copies), which a step's time between events also holds
        print(f"   {sum(us for _, us in others):8.1f} us  all of torch's: " +
              ", ".join(f"{key[:40]} {us:.1f}" for key, us in others[:3]))


if __name__ == "__main__":
    main()
