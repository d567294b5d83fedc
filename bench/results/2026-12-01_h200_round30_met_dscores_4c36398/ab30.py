"""Round 30 A/B: forward and forward+backward medians (ms, triton do_bench) of the window alone;
backward = f+b - fwd. The build is the one on PYTHONPATH."""
import torch, triton
from fibsparse_ext import fibsparse_attn
torch.manual_seed(0)
bench = lambda fn: triton.testing.do_bench(fn, warmup=25, rep=150)
for L, H, Hkv, d in ((65536, 8, 8, 64), (131072, 8, 8, 64), (65536, 32, 8, 128)):
    q = torch.randn(1, L, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(1, L, H, d, device="cuda", dtype=torch.bfloat16)
    none = torch.empty(0, dtype=torch.int32, device="cuda")
    f = bench(lambda: fibsparse_attn(q, k, v, 128, none))
    fb = bench(lambda: torch.autograd.grad(fibsparse_attn(q, k, v, 128, none), (q, k, v), g))
    print(f"L={L} H={H}/{Hkv} d={d}: window {f:.3f}/{fb:.3f} bwd {fb - f:.3f}", flush=True)
    del q, k, v, g
    torch.cuda.empty_cache()
