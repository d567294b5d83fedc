"""Round 33, one build: the full pattern's forward+backward (ms, triton do_bench medians) with integer offsets
(stored dS), fractional positions (offsets x 0.97, with a gradient) on the general passes
(FIBSPARSE_STORED_DSCORES=0) and with stored dS; three rounds rotating the order. `kernels` prints each kernel's
time per call (torch.profiler) for both fractional routes."""
import os, sys
import torch, triton
from fibsparse_ext import fibsparse_attn
from fibsparse_ext.schedules import make_schedule

CONFIGS = ((16384, 8, 8, 64), (65536, 8, 8, 64), (16384, 32, 8, 128), (65536, 32, 8, 128))
bench = lambda fn: triton.testing.do_bench(fn, warmup=25, rep=150)


def inputs(L, H, Hkv, d):
    torch.manual_seed(0)
    q = torch.randn(1, L, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    offs = torch.tensor(make_schedule("fixed", num_layers=1, window=128, max_distance=L).offsets(0),
                        dtype=torch.int32, device="cuda")
    return q, k, v, torch.randn_like(q), offs, (offs.float() * 0.97).requires_grad_(True)


def set_route(route):
    if route.endswith("general"):
        os.environ["FIBSPARSE_STORED_DSCORES"] = "0"
    else:
        os.environ.pop("FIBSPARSE_STORED_DSCORES", None)


def ab():
    kinds = ["integer", "frac-general", "frac-stored"]
    for L, H, Hkv, d in CONFIGS:
        q, k, v, g, offs, pos = inputs(L, H, Hkv, d)
        times = {kind: [] for kind in kinds}
        for rnd in range(3):
            for kind in kinds[rnd:] + kinds[:rnd]:
                set_route(kind)
                o, wrt = (offs, (q, k, v)) if kind == "integer" else (pos, (q, k, v, pos))
                times[kind].append(bench(lambda: torch.autograd.grad(fibsparse_attn(q, k, v, 128, o), wrt, g)))
        best = {kind: min(t) for kind, t in times.items()}
        print(f"L={L} H={H}/{Hkv} d={d} K={len(offs)} f+b ms: "
              + "  ".join(f"{kind} {' '.join(f'{t:.3f}' for t in times[kind])}" for kind in kinds)
              + f"  | frac/int general {best['frac-general'] / best['integer']:.3f}"
              + f" stored {best['frac-stored'] / best['integer']:.3f}", flush=True)
        del q, k, v, g
        torch.cuda.empty_cache()


def kernels():
    from torch.profiler import profile, ProfilerActivity
    for L, H, Hkv, d in CONFIGS[1::2]:
        q, k, v, g, offs, pos = inputs(L, H, Hkv, d)
        for route in ("frac-general", "frac-stored"):
            set_route(route)
            for _ in range(3):
                torch.autograd.grad(fibsparse_attn(q, k, v, 128, pos), (q, k, v, pos), g)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    torch.autograd.grad(fibsparse_attn(q, k, v, 128, pos), (q, k, v, pos), g)
                torch.cuda.synchronize()
            print(f"L={L} H={H}/{Hkv} d={d} fractional, {route}: per call (us)")
            for e in prof.key_averages():
                if "fibsparse" in e.key:
                    print(f"  {e.device_time_total / 5:10.1f}  {e.key[:150]}")
        del q, k, v, g
        torch.cuda.empty_cache()


{"ab": ab, "kernels": kernels}[sys.argv[1]]()
