"""Round 41 A/B: the general dq pass (fractional positions at head_dim 64, and integer offsets with
FIBSPARSE_STORED_DSCORES=0), plus the integer stored route as a control; forward+backward medians (ms, triton
do_bench); with --kernels, CUDA time per kernel (us) of 5 calls under torch.profiler."""
import os, sys
import torch, triton
from torch.profiler import profile, ProfilerActivity
from fibsparse_ext import fibsparse_attn
from fibsparse_ext.schedules import make_schedule

import fibsparse_ext
print("fibsparse_ext from", fibsparse_ext.__file__)
# (seqlen, heads, kv heads, head_dim, kind): kind frac (general passes at head_dim 64), general (integer,
# stored dS switched off), stored (integer, the default route: the control)
CONFIGS = ((16384, 8, 8, 64, "frac"), (65536, 8, 8, 64, "frac"), (65536, 32, 8, 64, "frac"),
           (65536, 8, 8, 64, "general"), (65536, 32, 8, 128, "general"), (65536, 32, 8, 128, "stored"))
for L, H, Hkv, d, kind in CONFIGS:
    if "--kernels" in sys.argv and L < 65536:
        continue
    if kind == "general":
        os.environ["FIBSPARSE_STORED_DSCORES"] = "0"
    else:
        os.environ.pop("FIBSPARSE_STORED_DSCORES", None)
    torch.manual_seed(0)
    q = torch.randn(1, L, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    g = torch.randn_like(q)
    offs = torch.tensor(make_schedule("fixed", num_layers=1, window=128, max_distance=L).offsets(0),
                        dtype=torch.int32, device="cuda")
    if kind == "frac":
        pos = (offs.float() * 0.97).requires_grad_(True)
        step = lambda: torch.autograd.grad(fibsparse_attn(q, k, v, 128, pos), (q, k, v, pos), g)
    else:
        step = lambda: torch.autograd.grad(fibsparse_attn(q, k, v, 128, offs), (q, k, v), g)
    tag = f"L={L} H={H}/{Hkv} d={d} {kind}"
    if "--kernels" not in sys.argv:
        t = triton.testing.do_bench(step, warmup=25, rep=200)
        print(f"{tag} f+b ms {t:.4f}")
        continue
    for _ in range(3): step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5): step()
        torch.cuda.synchronize()
    print(tag)
    for e in prof.key_averages():
        if e.device_time_total > 0 and "fibsparse" in e.key and "check" not in e.key:
            print(f"   {e.device_time_total / e.count:8.1f} us  {e.key[:100]}")
