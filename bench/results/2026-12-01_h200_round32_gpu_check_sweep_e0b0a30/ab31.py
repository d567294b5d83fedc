"""Round 31 A/B in one build: the general passes (FIBSPARSE_STORED_DSCORES=0) against stored dS (unset), full
pattern with integer Fibonacci offsets (alpha 1, up to seqlen) and the window alone; forward and
forward+backward medians (ms, triton do_bench), backward = f+b - fwd; rounds alternate the order.
With --kernels: one forward+backward per route and config under torch.profiler, CUDA time per kernel (us)."""
import os, sys
import torch, triton
from fibsparse_ext import fibsparse_attn
from fibsparse_ext.schedules import make_schedule

CONFIGS = ((65536, 8, 8, 64), (131072, 8, 8, 64), (65536, 32, 8, 128), (131072, 32, 8, 128))
bench = lambda fn: triton.testing.do_bench(fn, warmup=25, rep=150)


def inputs(L, H, Hkv, d):
    torch.manual_seed(0)
    q = torch.randn(1, L, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(1, L, H, d, device="cuda", dtype=torch.bfloat16)
    offs = torch.tensor(make_schedule("fixed", num_layers=1, window=128, max_distance=L).offsets(0),
                        dtype=torch.int32, device="cuda")
    return q, k, v, g, offs


def set_route(route):
    if route == "general":
        os.environ["FIBSPARSE_STORED_DSCORES"] = "0"
    else:
        os.environ.pop("FIBSPARSE_STORED_DSCORES", None)


def timing(rnd):
    for L, H, Hkv, d in CONFIGS:
        q, k, v, g, offs = inputs(L, H, Hkv, d)
        none = offs[:0]
        for pattern, o in (("full", offs), ("window", none)):
            routes = ("general", "stored") if rnd % 2 else ("stored", "general")
            if os.environ.get("AB_ROUTES") == "stored":
                routes = ("stored",)
            for route in routes:
                set_route(route)
                f = bench(lambda: fibsparse_attn(q, k, v, 128, o))
                fb = bench(lambda: torch.autograd.grad(fibsparse_attn(q, k, v, 128, o), (q, k, v), g))
                print(f"round {rnd} L={L} H={H}/{Hkv} d={d} K={len(offs)} {pattern:6s} {route:7s}: "
                      f"fwd {f:.3f} f+b {fb:.3f} bwd {fb - f:.3f}", flush=True)
        del q, k, v, g
        torch.cuda.empty_cache()


def kernels():
    from torch.profiler import profile, ProfilerActivity
    for L, H, Hkv, d in CONFIGS[::2]:
        q, k, v, g, offs = inputs(L, H, Hkv, d)
        for route in ("general", "stored"):
            set_route(route)
            for _ in range(3):
                torch.autograd.grad(fibsparse_attn(q, k, v, 128, offs), (q, k, v), g)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    torch.autograd.grad(fibsparse_attn(q, k, v, 128, offs), (q, k, v), g)
                torch.cuda.synchronize()
            print(f"L={L} H={H}/{Hkv} d={d} full, {route}: per call (us)")
            for e in prof.key_averages():
                if e.device_time_total > 0 and ("fibsparse" in e.key):
                    print(f"   {e.device_time_total / 5:9.1f}  {e.key[:150]}")
        del q, k, v, g
        torch.cuda.empty_cache()


if __name__ == "__main__":
    if "--kernels" in sys.argv:
        kernels()
    else:
        timing(int(sys.argv[1]))
