"""Round 29 A/B: forward and forward+backward medians (ms, triton do_bench) of the window alone and of
integer Fibonacci offsets; backward = f+b - fwd. The build is the one on PYTHONPATH (printed)."""
import torch, triton
import fibsparse_ext
from fibsparse_ext import fibsparse_attn
print("module:", fibsparse_ext.__file__, flush=True)
torch.manual_seed(0)
bench = lambda fn: triton.testing.do_bench(fn, warmup=25, rep=150)
for L, H, Hkv, d in ((65536, 8, 8, 64), (131072, 8, 8, 64), (65536, 32, 8, 128)):
    q = torch.randn(1, L, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    offs, a, b = [], 1, 2
    while b <= L:
        if b > 128: offs.append(b)
        a, b = b, a + b
    full = torch.tensor(offs, device="cuda", dtype=torch.int32)
    g = torch.randn(1, L, H, d, device="cuda", dtype=torch.bfloat16)
    parts = []
    for name, o in (("window", full[:0]), ("int", full)):
        f = bench(lambda: fibsparse_attn(q, k, v, 128, o))
        fb = bench(lambda: torch.autograd.grad(fibsparse_attn(q, k, v, 128, o), (q, k, v), g))
        parts.append(f"{name} {f:.3f}/{fb:.3f} bwd {fb - f:.3f}")
    print(f"L={L} H={H}/{Hkv} d={d} K={len(offs)}: " + "  ".join(parts), flush=True)
    del q, k, v, g
    torch.cuda.empty_cache()
