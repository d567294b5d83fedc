"""Fractional offsets on the Hopper forward against the mma.sync forward (FIBSPARSE_HOPPER=0),
both against integer offsets on the Hopper forward: fwd and fwd+bwd medians (do_bench),
three rounds alternating the order of the two fractional forwards."""
import os, torch, triton
import fibsparse_ext
from fibsparse_ext import fibsparse_attn
print("module:", fibsparse_ext.__file__, flush=True)
torch.manual_seed(0)

def bench(fn):
    return triton.testing.do_bench(fn, warmup=30, rep=200)

def with_hopper(setting, fn):
    os.environ["FIBSPARSE_HOPPER"] = setting
    try:
        return fn()
    finally:
        del os.environ["FIBSPARSE_HOPPER"]

for L, H, Hkv, d in ((16384, 8, 8, 64), (65536, 8, 8, 64), (16384, 32, 8, 128), (65536, 32, 8, 128)):
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
    fwd = lambda o: (lambda: fibsparse_attn(q, k, v, 128, o))
    fb = lambda o: (lambda: torch.autograd.grad(fibsparse_attn(q, k, v, 128, o), (q, k, v), g))
    with torch.no_grad():
        hop = fibsparse_attn(q, k, v, 128, frac).float()
        mma = with_hopper("0", lambda: fibsparse_attn(q, k, v, 128, frac)).float()
        ref_diff = ((hop - mma).norm() / mma.norm()).item()
    res = {"int": [], "frac_hopper": [], "frac_mma": []}
    for r in range(3):
        order = ["frac_hopper", "frac_mma"] if r % 2 == 0 else ["frac_mma", "frac_hopper"]
        for name in ["int"] + order:
            o = full if name == "int" else frac
            setting = "0" if name == "frac_mma" else "1"
            res[name].append(with_hopper(setting, lambda: (bench(fwd(o)), bench(fb(o)))))
    fmt = lambda xs: " / ".join(f"{x:.3f}" for x in xs)
    best = {n: (min(x[0] for x in v), min(x[1] for x in v)) for n, v in res.items()}
    print(f"L={L} H={H}/{Hkv} d={d} K={len(offs)}  |hopper-mma|/|mma| {ref_diff:.2e}")
    for n in res:
        print(f"  {n:12s} fwd {fmt([x[0] for x in res[n]])}  f+b {fmt([x[1] for x in res[n]])}")
    (fi, fbi), (fh, fbh), (fm, fbm) = best["int"], best["frac_hopper"], best["frac_mma"]
    print(f"  best: frac/int fwd hopper {fh/fi:.3f} mma {fm/fi:.3f}; f+b hopper {fbh/fbi:.3f} mma {fbm/fbi:.3f}; "
          f"frac fwd hopper/mma {fh/fm:.3f}", flush=True)
