"""Integer against fractional offsets: fwd and fwd+bwd medians (do_bench), and the ratio."""
import torch, triton
import fibsparse_ext
from fibsparse_ext import fibsparse_attn
print("module:", fibsparse_ext.__file__, flush=True)
torch.manual_seed(0)
for L, H, Hkv, d in ((16384, 8, 8, 64), (65536, 8, 8, 64), (16384, 32, 8, 128)):
    q = torch.randn(1, L, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    offs, a, b = [], 1, 2
    while b <= L:
        if b > 128: offs.append(b)
        a, b = b, a + b
    full = torch.tensor(offs, device="cuda", dtype=torch.int32)
    row = []
    for name, o in (("int", full), ("frac", full.float() * 0.97)):
        f = lambda: fibsparse_attn(q, k, v, 128, o)
        out = f(); g = torch.randn_like(out)
        fb = lambda: torch.autograd.grad(fibsparse_attn(q, k, v, 128, o), (q, k, v), g)
        row.append((name, triton.testing.do_bench(f, warmup=30, rep=200), triton.testing.do_bench(fb, warmup=30, rep=200)))
    (_, fi, fbi), (_, ff, fbf) = row
    print(f"L={L} H={H}/{Hkv} d={d} K={len(offs)}: int fwd {fi:.3f} f+b {fbi:.3f}  frac fwd {ff:.3f} f+b {fbf:.3f} bwd {fbf-ff:.3f}  ratio fwd {ff/fi:.3f} f+b {fbf/fbi:.3f}", flush=True)
