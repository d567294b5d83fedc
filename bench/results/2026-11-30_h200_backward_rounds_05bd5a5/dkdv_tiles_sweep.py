"""Round 20: backward (f+b - fwd) of the window alone and the full pattern against FIBSPARSE_DKDV_TILES."""
import os, torch, triton
import fibsparse_ext
from fibsparse_ext import fibsparse_attn
print("module:", fibsparse_ext.__file__, flush=True)
bench = lambda fn: triton.testing.do_bench(fn, warmup=25, rep=150)
for L, H, Hkv, d in ((65536, 8, 8, 64), (131072, 8, 8, 64), (65536, 32, 8, 128)):
    torch.manual_seed(0)
    q = torch.randn(1, L, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    offs, a, b = [], 1, 2
    while b <= L:
        if b > 128: offs.append(b)
        a, b = b, a + b
    full = torch.tensor(offs, device="cuda", dtype=torch.int32)
    g = torch.randn(1, L, H, d, device="cuda", dtype=torch.bfloat16)
    for name, o in (("window", full[:0]), ("int", full)):
        f = bench(lambda: fibsparse_attn(q, k, v, 128, o))
        row = []
        for tiles in ("default", "1", "2", "4", "8", "32"):
            if tiles == "default":
                os.environ.pop("FIBSPARSE_DKDV_TILES", None)
            else:
                os.environ["FIBSPARSE_DKDV_TILES"] = tiles
            fb = bench(lambda: torch.autograd.grad(fibsparse_attn(q, k, v, 128, o), (q, k, v), g))
            row.append(f"{tiles} {fb - f:.3f}")
        os.environ.pop("FIBSPARSE_DKDV_TILES", None)
        print(f"L={L} H={H}/{Hkv} d={d} {name}: bwd " + "  ".join(row), flush=True)
    del q, k, v, g
    torch.cuda.empty_cache()
