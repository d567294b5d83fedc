"""Round 46 A/B: forward+backward medians (ms, triton do_bench) where the dq pass with offsets from stored dS runs
(dense 64k and 128k GQA 32/8 d 128, 64k fractional, 64k MHA d 128, 64k and 128k MHA d 64, 64k GQA 32/8 d 64, a packed
batch at GQA d 128) and a window-alone control; with --kernels, CUDA time per kernel (us) of 5 steps."""
import sys
import torch, triton
from torch.profiler import profile, ProfilerActivity
from fibsparse_ext import fibsparse_attn, fibsparse_attn_varlen
from fibsparse_ext.schedules import make_schedule

import fibsparse_ext
print("fibsparse_ext from", fibsparse_ext.__file__)
LENGTHS = [16384, 8192, 12288, 4096, 16384, 8192]
CONFIGS = [("warm-up", 65536, 8, 8, 64, "int"), ("dense", 65536, 32, 8, 128, "int"),
           ("dense", 131072, 32, 8, 128, "int"), ("dense", 65536, 32, 8, 128, "frac"),
           ("dense", 65536, 8, 8, 128, "int"), ("dense", 65536, 8, 8, 64, "int"), ("dense", 131072, 8, 8, 64, "int"),
           ("dense", 65536, 32, 8, 64, "int"), ("packed", 65536, 32, 8, 128, "int"),
           ("dense", 65536, 32, 8, 128, "window")]
for name, total, H, Hkv, d, kind in CONFIGS:
    torch.manual_seed(0)
    packed = name == "packed"
    longest = max(LENGTHS) if packed else total
    q = torch.randn(total, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(total, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    grad = torch.randn_like(q)
    offs = torch.tensor(make_schedule("fixed", num_layers=1, window=128, max_distance=longest).offsets(0),
                        dtype=torch.int32, device="cuda")
    if kind == "frac": offs = offs.float() * 0.97
    if kind == "window": offs = offs[:0]
    if packed:
        cu = torch.tensor([0] + torch.tensor(LENGTHS).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
        attend = lambda: fibsparse_attn_varlen(q, k, v, cu, cu, longest, longest, 128, offs)
    else:
        attend = lambda: fibsparse_attn(q[None], k[None], v[None], 128, offs)[0]
    step = lambda: torch.autograd.grad(attend(), [q, k, v], grad)
    label = f"{name} {total} tokens H={H}/{Hkv} d={d} {kind}"
    if name == "warm-up":
        triton.testing.do_bench(step, warmup=25, rep=100)
        continue
    if "--kernels" not in sys.argv:
        print(f"{label} fwd+bwd ms {triton.testing.do_bench(step, warmup=25, rep=200):.4f}")
        continue
    for _ in range(3): step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5): step()
        torch.cuda.synchronize()
    print(label)
    for e in prof.key_averages():
        if e.device_time_total > 0 and "fibsparse" in e.key and "check" not in e.key:
            print(f"   {e.device_time_total / e.count:8.1f} us  {e.key[:100]}")
