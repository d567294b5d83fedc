"""The window alone against FA4's sliding window in one run: forward and forward+backward medians (ms), three rounds alternating the order."""
import torch, triton
from flash_attn.cute import flash_attn_func
from fibsparse_ext import fibsparse_attn
torch.manual_seed(0)
bench = lambda fn: triton.testing.do_bench(fn, warmup=25, rep=150)
none = torch.zeros(0, dtype=torch.int32, device="cuda")
def ours(q, k, v): return fibsparse_attn(q, k, v, 128, none)
def fa4(q, k, v):
    out = flash_attn_func(q, k, v, causal=True, window_size=(127, 0))
    return out[0] if isinstance(out, tuple) else out
for L, H, Hkv, d in ((65536, 8, 8, 64), (131072, 8, 8, 64), (65536, 32, 8, 128)):
    q = torch.randn(1, L, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(1, L, H, d, device="cuda", dtype=torch.bfloat16)
    res = {"ours": [], "fa4": []}
    for rnd in range(3):
        for name in (("ours", "fa4") if rnd % 2 == 0 else ("fa4", "ours")):
            fn = ours if name == "ours" else fa4
            f = bench(lambda: fn(q, k, v))
            fb = bench(lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), g))
            res[name].append((f, fb))
    o = min(x[1] for x in res["ours"]); a = min(x[1] for x in res["fa4"])
    of = min(x[0] for x in res["ours"]); af = min(x[0] for x in res["fa4"])
    print(f"L={L} H={H}/{Hkv} d={d}: ours {res['ours']}  fa4 {res['fa4']}  | fwd {of:.3f}/{af:.3f} = {of/af:.3f}x  f+b {o:.3f}/{a:.3f} = {o/a:.3f}x", flush=True)
