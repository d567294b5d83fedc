"""Round 43 A/B: packed batches on the Hopper forward. Round 41's packed batch (six sequences of 4k-16k, 64k
tokens), integer and fractional, MHA d 64 and GQA 32/8 d 128, plus dense 64k controls (the Hopper forward
before and after); forward and forward+backward medians (ms, triton do_bench); with --kernels, CUDA time per
kernel (us) of 5 forward+backward calls under torch.profiler."""
import sys
import torch, triton
from torch.profiler import profile, ProfilerActivity
from fibsparse_ext import fibsparse_attn, fibsparse_attn_varlen
from fibsparse_ext.schedules import make_schedule

import fibsparse_ext
print("fibsparse_ext from", fibsparse_ext.__file__)
LENGTHS = [16384, 8192, 12288, 4096, 16384, 8192]
# (name, heads, kv heads, head_dim, fractional, packed); the first configuration warms the process up
CONFIGS = (("warm-up", 8, 8, 64, False, False),
           ("packed", 8, 8, 64, False, True), ("packed", 8, 8, 64, True, True),
           ("packed", 32, 8, 128, False, True), ("packed", 32, 8, 128, True, True),
           ("dense 64k", 8, 8, 64, False, False), ("dense 64k", 32, 8, 128, False, False))
for name, H, Hkv, d, frac, packed in CONFIGS:
    torch.manual_seed(0)
    total = sum(LENGTHS) if packed else 65536
    longest = max(LENGTHS) if packed else 65536
    q = torch.randn(total, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(total, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    g = torch.randn_like(q)
    offs = torch.tensor(make_schedule("fixed", num_layers=1, window=128, max_distance=longest).offsets(0),
                        dtype=torch.int32, device="cuda")
    pos = (offs.float() * 0.97).requires_grad_(True) if frac else offs
    inputs = (q, k, v, pos) if frac else (q, k, v)
    if packed:
        cu = torch.tensor([0] + torch.tensor(LENGTHS).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
        attend = lambda: fibsparse_attn_varlen(q, k, v, cu, cu, longest, longest, 128, pos)
    else:
        attend = lambda: fibsparse_attn(q[None], k[None], v[None], 128, pos)[0]
    step = lambda: torch.autograd.grad(attend(), inputs, g)
    tag = f"{name} {total} tokens H={H}/{Hkv} d={d} {'fractional' if frac else 'integer'}"
    if name == "warm-up":
        triton.testing.do_bench(step, warmup=25, rep=100)
        continue
    if "--kernels" not in sys.argv:
        with torch.no_grad():
            tf = triton.testing.do_bench(attend, warmup=25, rep=200)
        t = triton.testing.do_bench(step, warmup=25, rep=200)
        print(f"{tag} fwd ms {tf:.4f} f+b ms {t:.4f}")
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
