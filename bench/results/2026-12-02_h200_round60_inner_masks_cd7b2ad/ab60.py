"""Round 60's A/B, one build, one process: the dk/dv pass with the band's inner sub-tiles unmasked (default)
against every pair tested (FIBSPARSE_AB_MASK_ALL=1): that kernel's device time (torch.profiler, mean of 5
steps) and the forward+backward (do_bench median), three rounds alternating the order, fastest kept; dq, dk
and dv compared bitwise."""
import os, torch, triton
from torch.profiler import profile, ProfilerActivity
from fibsparse_ext import fibsparse_attn, make_schedule

print(torch.cuda.get_device_name(), torch.__version__, flush=True)
# (tokens, heads, kv heads, head_dim, offsets: "none" for the window alone, "int", "frac")
CONFIGS = [(65536, 8, 8, 64, "none"), (131072, 8, 8, 64, "none"), (65536, 32, 8, 128, "none"),
           (65536, 8, 8, 64, "int"), (131072, 8, 8, 64, "int"), (65536, 32, 8, 128, "int"),
           (131072, 32, 8, 128, "int"), (65536, 32, 8, 128, "frac")]


def make(total, H, Hkv, d, kind):
    torch.manual_seed(0)
    q = torch.randn(1, total, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(1, total, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    grad = torch.randn_like(q)
    offs = torch.tensor(make_schedule("fixed", num_layers=1, window=128, max_distance=total).offsets(0),
                        dtype=torch.int32, device="cuda")
    if kind == "none": offs = offs[:0]
    if kind == "frac": offs = offs.float() * 0.97
    return q, k, v, grad, offs


def variant(new):
    if new: os.environ.pop("FIBSPARSE_AB_MASK_ALL", None)
    else: os.environ["FIBSPARSE_AB_MASK_ALL"] = "1"


for total, H, Hkv, d, kind in CONFIGS:
    q, k, v, grad, offs = make(total, H, Hkv, d, kind)
    step = lambda: torch.autograd.grad(fibsparse_attn(q, k, v, 128, offs), [q, k, v], grad)
    dkdv, fb, grads = {True: [], False: []}, {True: [], False: []}, {}
    for rnd in range(3):
        for new in ((True, False) if rnd % 2 == 0 else (False, True)):
            variant(new)
            if rnd == 0: grads[new] = step()
            for _ in range(3): step()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5): step()
                torch.cuda.synchronize()
            dkdv[new].append(sum(e.device_time_total for e in prof.key_averages() if "dkdv_mma_kernel" in e.key) / 5)
            fb[new].append(triton.testing.do_bench(step, warmup=10, rep=150))
    variant(True)
    same = all(torch.equal(a, b) for a, b in zip(grads[True], grads[False]))
    a, b = min(dkdv[True]), min(dkdv[False])
    fa, fbb = min(fb[True]), min(fb[False])
    print(f"{total} H {H}/{Hkv} d {d} {kind}: dkdv us inner unmasked {a:.1f} all masked {b:.1f} ({100*(a/b-1):+.1f}%)  "
          f"fwd+bwd ms {fa:.4f} / {fbb:.4f} ({100*(fa/fbb-1):+.1f}%)  bitwise equal {same}  "
          f"rounds dkdv {[round(x) for x in dkdv[True]]} / {[round(x) for x in dkdv[False]]}  "
          f"fwd+bwd {[round(x, 4) for x in fb[True]]} / {[round(x, 4) for x in fb[False]]}", flush=True)
    del q, k, v, grad, grads
