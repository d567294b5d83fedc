"""Round 26 A/B: forward medians (ms) of the Hopper forward with FIBSPARSE_HOPPER_PACK as the
environment sets it; forward+backward at 64k GQA; do_bench medians."""
import os, torch, triton
import fibsparse_ext
from fibsparse_ext import fibsparse_attn
torch.manual_seed(0)
bench = lambda fn: triton.testing.do_bench(fn, warmup=25, rep=150)
side = f"pack={os.environ.get('FIBSPARSE_HOPPER_PACK', 'default')} tiles={os.environ.get('FIBSPARSE_HOPPER_TILES', 'default')}"
for L, H, Hkv, d in ((16384, 32, 8, 128), (65536, 32, 8, 128), (131072, 32, 8, 128), (65536, 16, 4, 64)):
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
    parts = []
    for name, o in (("window", full[:0]), ("int", full), ("frac", frac)):
        if name == "frac" and L > 65536: continue
        f = bench(lambda: fibsparse_attn(q, k, v, 128, o))
        part = f"{name} {f:.3f}"
        if L == 65536 and d == 128 and name != "window":
            fb = bench(lambda: torch.autograd.grad(fibsparse_attn(q, k, v, 128, o), (q, k, v), g))
            part += f"/{fb:.3f}"
        parts.append(part)
    print(f"{side}  L={L} H={H}/{Hkv} d={d} K={len(offs)}: " + "  ".join(parts), flush=True)
    del q, k, v, g
    torch.cuda.empty_cache()
