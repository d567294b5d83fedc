"""The Hopper forward's offset steps one or two at a time (before / after builds): forward medians
of integer, fractional and window-alone calls, and forward+backward of integer and fractional."""
import torch, triton
import fibsparse_ext
from fibsparse_ext import fibsparse_attn
print("module:", fibsparse_ext.__file__, flush=True)
torch.manual_seed(0)
bench = lambda fn: triton.testing.do_bench(fn, warmup=20, rep=120)
for L, H, Hkv, d in ((16384, 8, 8, 64), (65536, 8, 8, 64), (131072, 8, 8, 64), (16384, 32, 8, 128), (65536, 32, 8, 128), (131072, 32, 8, 128)):
    q = torch.randn(1, L, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    offs, a, b = [], 1, 2
    while b <= L:
        if b > 128: offs.append(b)
        a, b = b, a + b
    full = torch.tensor(offs, device="cuda", dtype=torch.int32)
    frac = full.float() * 0.97
    g = torch.randn(1, L, H, d, device="cuda", dtype=torch.bfloat16)
    r = {}
    for name, o in (("int", full), ("frac", frac), ("window", full[:0])):
        r[name] = bench(lambda: fibsparse_attn(q, k, v, 128, o))
    if L <= 65536:
        for name, o in (("int", full), ("frac", frac)):
            r[name + " f+b"] = bench(lambda: torch.autograd.grad(fibsparse_attn(q, k, v, 128, o), (q, k, v), g))
    print(f"L={L} H={H}/{Hkv} d={d} K={len(offs)}: " + "  ".join(f"{n} {x:.3f}" for n, x in r.items()), flush=True)
