"""Per-kernel GPU time of one forward+backward, integer against fractional offsets (torch.profiler, 20 steps)."""
import torch
from torch.profiler import profile, ProfilerActivity
from fibsparse_ext import fibsparse_attn
torch.manual_seed(0)
for L, H, Hkv, d in ((16384, 8, 8, 64), (65536, 8, 8, 64)):
    q = torch.randn(1, L, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    offs, a, b = [], 1, 2
    while b <= L:
        if b > 128: offs.append(b)
        a, b = b, a + b
    full = torch.tensor(offs, device="cuda", dtype=torch.int32)
    for name, o in (("int", full), ("frac", (full.float() * 0.97).requires_grad_())):
        g = torch.randn_like(q)
        step = lambda: torch.autograd.grad(fibsparse_attn(q, k, v, 128, o), (q, k, v) + ((o,) if o.requires_grad else ()), g)
        for _ in range(5): step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(20): step()
            torch.cuda.synchronize()
        rows = [(e.key, e.device_time_total / 20, e.count // 20) for e in prof.key_averages() if e.device_time_total > 0]
        total = sum(t for _, t, _ in rows)
        print(f"L={L} H={H}/{Hkv} d={d} {name}: GPU total {total:.1f} us per step")
        for key, t, n in sorted(rows, key=lambda r: -r[1]):
            print(f"    {t:8.1f} us  x{n}  {key[:110]}")
