"""Round 49 A/B/C in one process: the integer dk/dv pass with stored dS at head_dim 128 as main has it (variant 0),
with k and v from shared memory (1), and with its band sub-tiles in two chains too (2), picked per call by
FIBSPARSE_EXP49. Each kernel's CUDA time (us, profiler, 5 steps per variant, three rounds in rotated order), then
forward+backward medians (triton do_bench), and a float64 check of each variant's gradients against variant 0's."""
import os, sys, statistics
import torch, triton
from torch.profiler import profile, ProfilerActivity
from fibsparse_ext import fibsparse_attn, fibsparse_attn_varlen
from fibsparse_ext.schedules import make_schedule

LENGTHS = [16384, 8192, 12288, 4096, 16384, 8192]
CONFIGS = [("dense", 65536, 32, 8), ("dense", 131072, 32, 8), ("dense", 65536, 8, 8), ("packed", 65536, 32, 8)]
VARIANTS = ["0", "1", "2"]
for name, total, H, Hkv in CONFIGS:
    torch.manual_seed(0)
    packed = name == "packed"
    longest = max(LENGTHS) if packed else total
    q = torch.randn(total, H, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(total, Hkv, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    grad = torch.randn_like(q)
    offs = torch.tensor(make_schedule("fixed", num_layers=1, window=128, max_distance=longest).offsets(0),
                        dtype=torch.int32, device="cuda")
    if packed:
        cu = torch.tensor([0] + torch.tensor(LENGTHS).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
        attend = lambda: fibsparse_attn_varlen(q, k, v, cu, cu, longest, longest, 128, offs)
    else:
        attend = lambda: fibsparse_attn(q[None], k[None], v[None], 128, offs)[0]
    step = lambda: torch.autograd.grad(attend(), [q, k, v], grad)
    label = f"{name} {total} tokens H={H}/{Hkv} d=128 int"
    grads = {}
    for var in VARIANTS:
        os.environ["FIBSPARSE_EXP49"] = var
        grads[var] = [g.double() for g in step()]
    for var in VARIANTS[1:]:
        err = max((a - b).abs().max().item() for a, b in zip(grads[var], grads["0"]))
        scale = max(b.abs().max().item() for b in grads["0"])
        print(f"{label} variant {var}: max |grad - variant 0's| {err:.3e} (largest |grad| {scale:.3e})")
    del grads
    kern = {v_: [] for v_ in VARIANTS}
    for rnd in range(3):
        order = VARIANTS[rnd:] + VARIANTS[:rnd]
        for var in order:
            os.environ["FIBSPARSE_EXP49"] = var
            for _ in range(3): step()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5): step()
                torch.cuda.synchronize()
            for e in prof.key_averages():
                if "dkdv_mma_kernel" in e.key:
                    kern[var].append(e.device_time_total / e.count)
    for var in VARIANTS:
        print(f"{label} variant {var} dkdv us rounds " + " ".join(f"{x:8.1f}" for x in kern[var]) +
              f"  min {min(kern[var]):8.1f}  vs 0: {min(kern[var]) / min(kern['0']) - 1:+.2%}")
    tot = {v_: [] for v_ in VARIANTS}
    for rnd in range(3):
        order = VARIANTS[rnd:] + VARIANTS[:rnd]
        for var in order:
            os.environ["FIBSPARSE_EXP49"] = var
            tot[var].append(triton.testing.do_bench(step, warmup=25, rep=150))
    for var in VARIANTS:
        print(f"{label} variant {var} fwd+bwd ms " + " ".join(f"{x:.4f}" for x in tot[var]) +
              f"  min {min(tot[var]):.4f}  vs 0: {min(tot[var]) / min(tot['0']) - 1:+.2%}")
    del q, k, v, grad
