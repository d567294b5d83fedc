"""Round 45 A/B: forward+backward medians (ms, triton do_bench) where the integer dk/dv pass with stored dS at
head_dim 64 runs (dense MHA d 64 at 64k and 128k, GQA 32/8 d 64 at 64k, round 41's packed batch at MHA d 64),
and a head_dim 128 control; with --kernels, CUDA time per kernel (us) of 5 steps under torch.profiler."""
import sys
import torch, triton
from torch.profiler import profile, ProfilerActivity
from fibsparse_ext import fibsparse_attn, fibsparse_attn_varlen
from fibsparse_ext.schedules import make_schedule

import fibsparse_ext
print("fibsparse_ext from", fibsparse_ext.__file__)
LENGTHS = [16384, 8192, 12288, 4096, 16384, 8192]
CONFIGS = [("warm-up", 65536, 8, 8, 64, False), ("dense", 65536, 8, 8, 64, False), ("dense", 131072, 8, 8, 64, False),
           ("dense", 65536, 32, 8, 64, False), ("packed", 65536, 8, 8, 64, True), ("dense", 65536, 32, 8, 128, False)]
for name, total, H, Hkv, d, packed in CONFIGS:
    torch.manual_seed(0)
    longest = max(LENGTHS) if packed else total
    q = torch.randn(total, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(total, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    grad = torch.randn_like(q)
    offs = torch.tensor(make_schedule("fixed", num_layers=1, window=128, max_distance=longest).offsets(0),
                        dtype=torch.int32, device="cuda")
    if packed:
        cu = torch.tensor([0] + torch.tensor(LENGTHS).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
        attend = lambda: fibsparse_attn_varlen(q, k, v, cu, cu, longest, longest, 128, offs)
    else:
        attend = lambda: fibsparse_attn(q[None], k[None], v[None], 128, offs)[0]
    step = lambda: torch.autograd.grad(attend(), [q, k, v], grad)
    label = f"{name} {total} tokens H={H}/{Hkv} d={d} integer"
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
