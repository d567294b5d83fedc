"""Round 59's A/B, one build, one process. (b) The dk/dv pass with its offset strips prefetched into the L2
a step ahead (default) against without (FIBSPARSE_AB_NO_PREFETCH=1): that kernel's device time (torch.profiler,
mean of 5 steps) and the forward+backward (do_bench median), three rounds alternating the order, fastest kept;
dk, dv and dq checked bitwise equal. (a) The fractional GQA forward under the rule (two spans, 4 tiles) against
round 58's count (four spans, FIBSPARSE_HOPPER_TILES=8)."""
import os, torch, triton
from torch.profiler import profile, ProfilerActivity
from fibsparse_ext import fibsparse_attn, make_schedule

print(torch.cuda.get_device_name(), torch.__version__)
CONFIGS = [(131072, 32, 8, 128, "int"), (65536, 32, 8, 128, "int"), (65536, 32, 8, 128, "frac"),
           (65536, 8, 8, 64, "int"), (131072, 8, 8, 64, "int"), (65536, 32, 8, 64, "int")]


def make(total, H, Hkv, d, kind):
    torch.manual_seed(0)
    q = torch.randn(1, total, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(1, total, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    grad = torch.randn_like(q)
    offs = torch.tensor(make_schedule("fixed", num_layers=1, window=128, max_distance=total).offsets(0),
                        dtype=torch.int32, device="cuda")
    if kind == "frac": offs = offs.float() * 0.97
    return q, k, v, grad, offs

def variant(on):
    if on: os.environ.pop("FIBSPARSE_AB_NO_PREFETCH", None)
    else: os.environ["FIBSPARSE_AB_NO_PREFETCH"] = "1"

for total, H, Hkv, d, kind in CONFIGS:
    q, k, v, grad, offs = make(total, H, Hkv, d, kind)
    step = lambda: torch.autograd.grad(fibsparse_attn(q, k, v, 128, offs), [q, k, v], grad)
    dkdv, fb, grads = {True: [], False: []}, {True: [], False: []}, {}
    for rnd in range(3):
        for on in ((True, False) if rnd % 2 == 0 else (False, True)):
            variant(on)
            if rnd == 0: grads[on] = step()
            for _ in range(3): step()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5): step()
                torch.cuda.synchronize()
            dkdv[on].append(sum(e.device_time_total for e in prof.key_averages() if "dkdv_mma_kernel" in e.key) / 5)
            fb[on].append(triton.testing.do_bench(step, warmup=10, rep=150))
    variant(True)
    same = all(torch.equal(a, b) for a, b in zip(grads[True], grads[False]))
    a, b = min(dkdv[True]), min(dkdv[False])
    fa, fbb = min(fb[True]), min(fb[False])
    print(f"{total} H {H}/{Hkv} d {d} {kind}: dkdv us prefetch {a:.1f} without {b:.1f} ({100*(a/b-1):+.1f}%)  "
          f"fwd+bwd ms {fa:.4f} / {fbb:.4f} ({100*(fa/fbb-1):+.1f}%)  bitwise equal {same}  "
          f"rounds dkdv {[round(x) for x in dkdv[True]]} / {[round(x) for x in dkdv[False]]}", flush=True)
    del q, k, v, grad, grads

for total in (65536, 16384):
    q, k, v, grad, offs = make(total, 32, 8, 128, "frac")
    with torch.no_grad():
        times, outs = {"rule": [], "8": []}, {}
        for rnd in range(3):
            for s in (("rule", "8") if rnd % 2 == 0 else ("8", "rule")):
                if s == "rule": os.environ.pop("FIBSPARSE_HOPPER_TILES", None)
                else: os.environ["FIBSPARSE_HOPPER_TILES"] = s
                if rnd == 0: outs[s] = fibsparse_attn(q, k, v, 128, offs, return_lse=True)
                times[s].append(triton.testing.do_bench(lambda: fibsparse_attn(q, k, v, 128, offs), warmup=25, rep=120))
        os.environ.pop("FIBSPARSE_HOPPER_TILES", None)
    same = all(torch.equal(x, y) for x, y in zip(outs["rule"], outs["8"]))
    r, e = min(times["rule"]), min(times["8"])
    print(f"fractional fwd {total} GQA 32/8 d 128: rule (two spans) {r:.4f} ms, four spans {e:.4f} "
          f"({100*(r/e-1):+.1f}%)  bitwise equal {same}", flush=True)
