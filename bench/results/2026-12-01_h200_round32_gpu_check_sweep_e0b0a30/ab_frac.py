"""Fractional against integer offsets at one commit: forward+backward medians (ms, triton do_bench) of the full
pattern (Fibonacci offsets alpha 1 up to seqlen; fractional: the same times 0.97, learned: with a gradient), three
rounds alternating the order."""
import torch, triton
from fibsparse_ext import fibsparse_attn
from fibsparse_ext.schedules import make_schedule
bench = lambda fn: triton.testing.do_bench(fn, warmup=25, rep=150)
for L, H, Hkv, d in ((16384, 8, 8, 64), (65536, 8, 8, 64), (16384, 32, 8, 128), (65536, 32, 8, 128)):
    torch.manual_seed(0)
    q = torch.randn(1, L, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn_like(q)
    offs = torch.tensor(make_schedule("fixed", num_layers=1, window=128, max_distance=L).offsets(0),
                        dtype=torch.int32, device="cuda")
    pos = (offs.float() * 0.97).requires_grad_(True)
    times = {"integer": [], "fractional": []}
    for rnd in range(3):
        for kind in (("integer", "fractional") if rnd % 2 == 0 else ("fractional", "integer")):
            o, inputs = (offs, (q, k, v)) if kind == "integer" else (pos, (q, k, v, pos))
            times[kind].append(bench(lambda: torch.autograd.grad(fibsparse_attn(q, k, v, 128, o), inputs, g)))
    i, f = min(times["integer"]), min(times["fractional"])
    print(f"L={L} H={H}/{Hkv} d={d} K={len(offs)} f+b ms: integer {' '.join(f'{t:.3f}' for t in times['integer'])}"
          f"  fractional {' '.join(f'{t:.3f}' for t in times['fractional'])}  ratio {f / i:.3f}", flush=True)
    del q, k, v, g
    torch.cuda.empty_cache()
