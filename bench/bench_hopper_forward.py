"""The two 16-bit forward kernels on one build, side by side: the Hopper forward
(warpgroup products fed by TMA), also with one 64-query tile per block (FIBSPARSE_HOPPER_TILES=1),
against the mma.sync forward (FIBSPARSE_HOPPER=0), on the
sliding-window peers' configurations: the Fibonacci offsets of the `fixed` schedule up to the sequence
length (one shared row) and the window alone. bf16, window 128, batch 1;
forward medians of back-to-back calls between CUDA events (bench/timing.py),
alternating the kernels twice, and the Hopper forward's output checked against
the mma.sync one's.

    python bench/bench_hopper_forward.py
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_commit import measured_commit  # noqa: E402
from timing import median_ms  # noqa: E402

from fibsparse_ext import fibsparse_attn, make_schedule  # noqa: E402

# (seqlen, heads, kv heads, head_dim): MHA at 64 and 128 (one head a block), GQA 32/8 (two heads a block).
CONFIGS = ((65536, 8, 8, 64), (131072, 8, 8, 64), (65536, 16, 16, 128), (16384, 32, 8, 128), (65536, 32, 8, 128),
           (131072, 32, 8, 128))


# (FIBSPARSE_HOPPER, FIBSPARSE_HOPPER_TILES): the Hopper forward with its own
# choice of tiles per block, with one tile per block, and the mma.sync forward.
SETTINGS = {"hopper": ("1", None), "hopper 1 tile": ("1", "1"), "mma.sync": ("0", None)}


def timed(setting, fn):
    hopper, tiles = SETTINGS[setting]
    os.environ["FIBSPARSE_HOPPER"] = hopper
    if tiles is None:
        os.environ.pop("FIBSPARSE_HOPPER_TILES", None)
    else:
        os.environ["FIBSPARSE_HOPPER_TILES"] = tiles
    return median_ms(fn, warmup=10, runs=50)


def main():
    torch.manual_seed(0)
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"commit {measured_commit()}")
    for L, H, Hkv, d in CONFIGS:
        q = torch.randn(1, L, H, d, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16)
        offs = make_schedule("fixed", num_layers=1, window=128, max_distance=L).offsets(0)
        full = torch.tensor(offs, device="cuda", dtype=torch.int32)
        for name, o in (("full", full), ("window", full[:0])):
            def forward():
                return fibsparse_attn(q, k, v, 128, o)
            os.environ["FIBSPARSE_HOPPER"] = "1"
            hopper_out = forward()
            os.environ["FIBSPARSE_HOPPER"] = "0"
            mma_out = forward()
            diff = ((hopper_out.float() - mma_out.float()).norm() / mma_out.float().norm()).item()
            times = {setting: [] for setting in SETTINGS}
            for _ in range(2):
                for setting in SETTINGS:
                    times[setting].append(timed(setting, forward))
            best = {setting: min(runs) for setting, runs in times.items()}
            hopper, one_tile, mma = best["hopper"], best["hopper 1 tile"], best["mma.sync"]
            print(f"L={L} H={H}/{Hkv} d={d} {name:6s} K={len(o)}: hopper {hopper:.3f} ms  (1 tile per block "
                  f"{one_tile:.3f} ms)  mma.sync {mma:.3f} ms  hopper/mma {hopper / mma:.2f}x  "
                  f"tiles gain {hopper / one_tile:.2f}x  (out rel diff {diff:.1e})", flush=True)
    os.environ.pop("FIBSPARSE_HOPPER", None)
    os.environ.pop("FIBSPARSE_HOPPER_TILES", None)


if __name__ == "__main__":
    main()
