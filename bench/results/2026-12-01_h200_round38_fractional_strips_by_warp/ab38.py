"""Round 38 A/B: fractional positions (the fixed schedule's Fibonacci offsets up to seqlen, x 0.97, requiring grad)
and, as a control, integer offsets at 64k GQA; forward+backward medians (ms, triton do_bench); with --kernels, CUDA
time per kernel (us) of 5 calls under torch.profiler."""
import sys
import torch, triton
from torch.profiler import profile, ProfilerActivity
from fibsparse_ext import fibsparse_attn
from fibsparse_ext.schedules import make_schedule

import fibsparse_ext
print("fibsparse_ext from", fibsparse_ext.__file__)
CONFIGS = ((16384, 8, 8, 64, True), (65536, 8, 8, 64, True), (16384, 32, 8, 128, True), (65536, 32, 8, 128, True),
           (65536, 32, 8, 128, False))
for L, H, Hkv, d, frac in CONFIGS:
    if "--kernels" in sys.argv and L < 65536:
        continue
    torch.manual_seed(0)
    q = torch.randn(1, L, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    g = torch.randn_like(q)
    offs = torch.tensor(make_schedule("fixed", num_layers=1, window=128, max_distance=L).offsets(0),
                        dtype=torch.int32, device="cuda")
    if frac:
        pos = (offs.float() * 0.97).requires_grad_(True)
        step = lambda: torch.autograd.grad(fibsparse_attn(q, k, v, 128, pos), (q, k, v, pos), g)
    else:
        step = lambda: torch.autograd.grad(fibsparse_attn(q, k, v, 128, offs), (q, k, v), g)
    tag = f"L={L} H={H}/{Hkv} d={d} {'fractional' if frac else 'integer'}"
    if "--kernels" not in sys.argv:
        t = triton.testing.do_bench(step, warmup=25, rep=200)
        print(f"{tag} f+b ms {t:.4f}")
        continue
    for _ in range(3): step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5): step()
        torch.cuda.synchronize()
    print(tag)
    for e in prof.key_averages():
        if e.device_time_total > 0 and "fibsparse" in e.key and "check" not in e.key:
            print(f"   {e.device_time_total / e.count:8.1f} us  {e.key[:100]}")
