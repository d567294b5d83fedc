"""The Hopper forward's time against FIBSPARSE_HOPPER_TILES at main (after round 57): default, 1, 2, 3, 4, 6, 8
tiles a block; GQA 32/8 d 128 (integer, fractional, window alone) and MHA 8 d 64 (integer, window alone);
forward medians (do_bench), three rounds alternating the order, fastest round; outputs checked bitwise equal."""
import os, torch, triton
from fibsparse_ext import fibsparse_attn
from fibsparse_ext.schedules import make_schedule

SETTINGS = ("default", "1", "2", "3", "4", "6", "8")
CONFIGS = [(65536, 32, 8, 128, "int"), (131072, 32, 8, 128, "int"), (16384, 32, 8, 128, "int"),
           (65536, 32, 8, 128, "frac"), (65536, 32, 8, 128, "window"), (65536, 8, 8, 64, "int"),
           (131072, 8, 8, 64, "int"), (131072, 8, 8, 64, "window"), (65536, 8, 8, 64, "window")]
for total, H, Hkv, d, kind in CONFIGS:
    torch.manual_seed(0)
    q = torch.randn(1, total, H, d, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, total, Hkv, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    offs = torch.tensor(make_schedule("fixed", num_layers=1, window=128, max_distance=total).offsets(0),
                        dtype=torch.int32, device="cuda")
    if kind == "frac": offs = offs.float() * 0.97
    if kind == "window": offs = offs[:0]
    times, outs = {s: [] for s in SETTINGS}, {}
    for rnd in range(3):
        for s in (SETTINGS if rnd % 2 == 0 else SETTINGS[::-1]):
            if s == "default": os.environ.pop("FIBSPARSE_HOPPER_TILES", None)
            else: os.environ["FIBSPARSE_HOPPER_TILES"] = s
            if rnd == 0: outs[s] = fibsparse_attn(q, k, v, 128, offs, return_lse=True)
            times[s].append(triton.testing.do_bench(lambda: fibsparse_attn(q, k, v, 128, offs), warmup=25, rep=120))
    os.environ.pop("FIBSPARSE_HOPPER_TILES", None)
    same = all(torch.equal(outs["1"][0], o[0]) and torch.equal(outs["1"][1], o[1]) for o in outs.values())
    best = min(times, key=lambda s: min(times[s]))
    print(f"{total} H {H}/{Hkv} d {d} {kind} fwd ms (fastest of 3): " +
          "  ".join(f"{s} {min(t):.4f}" for s, t in times.items()) + f"  | best {best}  bitwise equal {same}", flush=True)
