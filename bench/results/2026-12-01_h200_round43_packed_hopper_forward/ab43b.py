"""Round 43 A/B, second call: packed batches (round 41's six sequences of 4k-16k, 64k tokens) on the Hopper
forward (default) and on the mma.sync forward (FIBSPARSE_HOPPER=0) in one process, MHA and GQA 32/8 at head_dim
64 and 128, integer and fractional; then dense 64k controls. Forward medians (ms, triton do_bench; the backward
is the same kernels either way); with --kernels, CUDA time per forward kernel (us) of 5 forwards under torch.profiler."""
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
CONFIGS += [("dense 64k", 8, 8, 64, False, False), ("dense 64k", 32, 8, 128, False, False)]
for name, H, Hkv, d, frac, packed in CONFIGS:
    torch.manual_seed(0)
    total = sum(LENGTHS) if packed else 65536
    longest = max(LENGTHS) if packed else 65536
    q = torch.randn(total, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=False)
    k, v = (torch.randn(total, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=False) for _ in range(2))
    offs = torch.tensor(make_schedule("fixed", num_layers=1, window=128, max_distance=longest).offsets(0),
                        dtype=torch.int32, device="cuda")
    pos = (offs.float() * 0.97) if frac else offs
    if packed:
        cu = torch.tensor([0] + torch.tensor(LENGTHS).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
        attend = lambda: fibsparse_attn_varlen(q, k, v, cu, cu, longest, longest, 128, pos)
    else:
        attend = lambda: fibsparse_attn(q[None], k[None], v[None], 128, pos)[0]
    tag = f"{name} {total} tokens H={H}/{Hkv} d={d} {'fractional' if frac else 'integer'}"
    if name == "warm-up":
        with torch.no_grad():
            triton.testing.do_bench(attend, warmup=25, rep=100)
        continue
    for setting in (("1", "0") if packed else ("1",)):
        os.environ["FIBSPARSE_HOPPER"] = setting
        label = f"{tag} {'hopper' if setting == '1' else 'mma.sync'}"
        if "--kernels" not in sys.argv:
            with torch.no_grad():
                tf = triton.testing.do_bench(attend, warmup=25, rep=150)
            print(f"{label} fwd ms {tf:.4f}")
            continue
        with torch.no_grad():
            for _ in range(3): attend()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5): attend()
                torch.cuda.synchronize()
        print(label)
        for e in prof.key_averages():
            if e.device_time_total > 0 and "fibsparse" in e.key and "check" not in e.key:
                print(f"   {e.device_time_total / e.count:8.1f} us  {e.key[:100]}")
    os.environ.pop("FIBSPARSE_HOPPER", None)
