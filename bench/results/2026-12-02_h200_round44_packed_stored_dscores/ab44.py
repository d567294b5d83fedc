"""Round 44 A/B: packed batches (round 41's six sequences of 4k-16k, 64k tokens) with the backward from stored
dS (default: q and k share one cu_seqlens tensor) and on the general passes (FIBSPARSE_STORED_DSCORES=0) in
one process, MHA and GQA 32/8 at head_dim 64 and 128, integer and fractional; then dense 64k controls.
Forward+backward medians (ms, triton do_bench); with --kernels, CUDA time per kernel (us) of 5 steps."""
import os, sys
import torch, triton
from torch.profiler import profile, ProfilerActivity
from fibsparse_ext import fibsparse_attn, fibsparse_attn_varlen
from fibsparse_ext.schedules import make_schedule

import fibsparse_ext
print("fibsparse_ext from", fibsparse_ext.__file__)
LENGTHS = [16384, 8192, 12288, 4096, 16384, 8192]
CONFIGS = [("warm-up", 8, 8, 64, False, False)]
for H, Hkv, d in ((8, 8, 64), (8, 8, 128), (32, 8, 64), (32, 8, 128)):
    for frac in (False, True):
        CONFIGS.append(("packed", H, Hkv, d, frac, True))
CONFIGS += [("dense 64k", 8, 8, 64, False, False), ("dense 64k", 32, 8, 128, False, False),
            ("dense 64k", 32, 8, 128, True, False)]
for name, H, Hkv, d, frac, packed in CONFIGS:
    torch.manual_seed(0)
    total = sum(LENGTHS) if packed else 65536
    longest = max(LENGTHS) if packed else 65536
    q = torch.randn(total, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(total, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    grad = torch.randn_like(q)
    offs = torch.tensor(make_schedule("fixed", num_layers=1, window=128, max_distance=longest).offsets(0),
                        dtype=torch.int32, device="cuda")
    pos = (offs.float() * 0.97) if frac else offs
    if packed:
        cu = torch.tensor([0] + torch.tensor(LENGTHS).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
        attend = lambda: fibsparse_attn_varlen(q, k, v, cu, cu, longest, longest, 128, pos)
    else:
        attend = lambda: fibsparse_attn(q[None], k[None], v[None], 128, pos)[0]
    step = lambda: torch.autograd.grad(attend(), [q, k, v], grad)
    tag = f"{name} {total} tokens H={H}/{Hkv} d={d} {'fractional' if frac else 'integer'}"
    if name == "warm-up":
        triton.testing.do_bench(step, warmup=25, rep=100)
        continue
    for setting in (("1", "0") if packed else ("1",)):
        os.environ["FIBSPARSE_STORED_DSCORES"] = setting
        label = f"{tag} {'stored dS' if setting == '1' else 'general'}"
        if "--kernels" not in sys.argv:
            tb = triton.testing.do_bench(step, warmup=25, rep=150)
            print(f"{label} fwd+bwd ms {tb:.4f}  peak MB {torch.cuda.max_memory_allocated() / 2**20:.0f}")
            torch.cuda.reset_peak_memory_stats()
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
    os.environ.pop("FIBSPARSE_STORED_DSCORES", None)
