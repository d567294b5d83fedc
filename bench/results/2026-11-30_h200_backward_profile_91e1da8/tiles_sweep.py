"""Hopper forward: time against FIBSPARSE_HOPPER_TILES per configuration, full pattern and window alone.
Medians of back-to-back calls between CUDA events (bench/timing.py), three rounds alternating the tile counts;
the min and max of the three medians are printed."""
import os, sys, torch
sys.path.insert(0, "bench")
from timing import median_ms
from fibsparse_ext import fibsparse_attn, make_schedule
torch.manual_seed(0)
os.environ["FIBSPARSE_HOPPER"] = "always"
TILES = ("default", "1", "2", "4", "8", "16", "32")
for L, H, Hkv, d in ((16384, 32, 8, 128), (65536, 8, 8, 64), (131072, 8, 8, 64), (65536, 16, 16, 128),
                     (65536, 32, 8, 128), (131072, 32, 8, 128)):
    q, k, v = [torch.randn(1, L, h, d, device="cuda", dtype=torch.bfloat16) for h in (H, Hkv, Hkv)]
    full = torch.tensor(make_schedule("fixed", num_layers=1, window=128, max_distance=L).offsets(0), device="cuda", dtype=torch.int32)
    for name, o in (("full", full), ("window", full[:0])):
        times = {t: [] for t in TILES}
        for rnd in range(3):
            for t in TILES:
                if t == "default": os.environ.pop("FIBSPARSE_HOPPER_TILES", None)
                else: os.environ["FIBSPARSE_HOPPER_TILES"] = t
                times[t].append(median_ms(lambda: fibsparse_attn(q, k, v, 128, o), warmup=5, runs=40))
        print(f"{L:>6} H{H}/{Hkv} d{d} {name:6}: " + "  ".join(f"{t} {min(x):.3f}-{max(x):.3f}" for t, x in times.items()), flush=True)
    del q, k, v
