"""Round 58's A/B: the Hopper forward with the new tiles rule (default) against fixed tiles per block
(FIBSPARSE_HOPPER_TILES 1, 2, 4, 8; in tiles, 2 tiles a 64-query span where two heads share a warpgroup);
forward medians (do_bench), three rounds alternating the order, fastest round; outputs checked bitwise equal;
then forward+backward, default against the old rule's count."""
import os, torch, triton
from fibsparse_ext import fibsparse_attn
from fibsparse_ext.schedules import make_schedule

SETTINGS = ("default", "1", "2", "4", "8")
CONFIGS = [(1, 16384, 32, 8, 128, "int"), (1, 32768, 32, 8, 128, "int"), (1, 65536, 32, 8, 128, "int"),
           (1, 98304, 32, 8, 128, "int"), (1, 131072, 32, 8, 128, "int"), (4, 16384, 32, 8, 128, "int"),
           (1, 65536, 32, 8, 64, "int"), (1, 131072, 32, 8, 64, "int"), (1, 65536, 32, 8, 128, "frac"),
           (1, 16384, 32, 8, 128, "frac"), (1, 65536, 8, 8, 64, "int"), (1, 65536, 32, 8, 128, "window")]

def inputs(B, total, H, Hkv, d, kind, grad=False):
    torch.manual_seed(0)
    q = torch.randn(B, total, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=grad)
    k, v = (torch.randn(B, total, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=grad) for _ in range(2))
    offs = torch.tensor(make_schedule("fixed", num_layers=1, window=128, max_distance=total).offsets(0),
                        dtype=torch.int32, device="cuda")
    if kind == "frac": offs = offs.float() * 0.97
    if kind == "window": offs = offs[:0]
    return q, k, v, offs

def setting(s):
    if s == "default": os.environ.pop("FIBSPARSE_HOPPER_TILES", None)
    else: os.environ["FIBSPARSE_HOPPER_TILES"] = s

for B, total, H, Hkv, d, kind in CONFIGS:
    q, k, v, offs = inputs(B, total, H, Hkv, d, kind)
    times, outs = {s: [] for s in SETTINGS}, {}
    for rnd in range(3):
        for s in (SETTINGS if rnd % 2 == 0 else SETTINGS[::-1]):
            setting(s)
            if rnd == 0: outs[s] = fibsparse_attn(q, k, v, 128, offs, return_lse=True)
            times[s].append(triton.testing.do_bench(lambda: fibsparse_attn(q, k, v, 128, offs), warmup=25, rep=120))
    setting("default")
    same = all(torch.equal(outs["1"][0], o[0]) and torch.equal(outs["1"][1], o[1]) for o in outs.values())
    best = min(times, key=lambda s: min(times[s]))
    print(f"B {B} {total} H {H}/{Hkv} d {d} {kind} fwd ms (fastest of 3): " +
          "  ".join(f"{s} {min(t):.4f}" for s, t in times.items()) + f"  | best {best}  bitwise equal {same}", flush=True)
    del q, k, v, outs

# forward+backward: the new default against the old rule's count (4 tiles at 32k-128k, 2 at 16k: 2 spans, 1 span)
for B, total, H, Hkv, d, kind, old in [(1, 16384, 32, 8, 128, "int", "2"), (1, 65536, 32, 8, 128, "int", "4"),
                                       (1, 131072, 32, 8, 128, "int", "4")]:
    q, k, v, offs = inputs(B, total, H, Hkv, d, kind, grad=True)
    g = torch.randn_like(q)
    step = lambda: torch.autograd.grad(fibsparse_attn(q, k, v, 128, offs), (q, k, v), g)
    times = {"default": [], old: []}
    for rnd in range(3):
        for s in (("default", old) if rnd % 2 == 0 else (old, "default")):
            setting(s)
            times[s].append(triton.testing.do_bench(step, warmup=10, rep=150))
    setting("default")
    print(f"B {B} {total} H {H}/{Hkv} d {d} {kind} fwd+bwd ms (fastest of 3): new default {min(times['default']):.4f}"
          f"  old rule ({old} tiles) {min(times[old]):.4f}", flush=True)
    del q, k, v, g
