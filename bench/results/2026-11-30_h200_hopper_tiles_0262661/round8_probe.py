"""Round 8's probe (run from the repository root on the device): the Hopper forward at 128k, GQA 32/8,
head_dim 128, bf16, window 128, with clusters on and off, with 0, 3, 8 and 15 Fibonacci offsets, and
with per-head offsets (one head per block); `full` / `window` run three forwards for Nsight Compute."""
import os, sys, torch
sys.path.insert(0, "bench")
from timing import median_ms
from fibsparse_ext import fibsparse_attn, make_schedule
mode = sys.argv[1]
L, H, Hkv, d = 131072, 32, 8, 128
torch.manual_seed(0)
q = torch.randn(1, L, H, d, device="cuda", dtype=torch.bfloat16)
k = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16)
v = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16)
offs = make_schedule("fixed", num_layers=1, window=128, max_distance=L).offsets(0)
full = torch.tensor(offs, device="cuda", dtype=torch.int32)
os.environ["FIBSPARSE_HOPPER"] = "always"
if mode == "time":
    for cl in ("1", "0"):
        os.environ["FIBSPARSE_HOPPER_CLUSTER"] = cl
        for name, o in (("full", full), ("window", full[:0]), ("3offs", full[:3]), ("8offs", full[:8])):
            t = min(median_ms(lambda: fibsparse_attn(q, k, v, 128, o), warmup=10, runs=50) for _ in range(2))
            print(f"cluster={cl} {name} K={len(o)}: {t:.3f} ms", flush=True)
    # Offsets that differ between neighbouring heads: one head per block.
    os.environ["FIBSPARSE_HOPPER_CLUSTER"] = "1"
    per_head = full.expand(H, -1).contiguous().clone(); per_head[1::2, 0] += 1
    t = min(median_ms(lambda: fibsparse_attn(q, k, v, 128, per_head), warmup=10, runs=50) for _ in range(2))
    print(f"per-head offsets (kHeads 1) full: {t:.3f} ms", flush=True)
else:
    o = full if mode == "full" else full[:0]
    for _ in range(3): fibsparse_attn(q, k, v, 128, o)
    torch.cuda.synchronize()
