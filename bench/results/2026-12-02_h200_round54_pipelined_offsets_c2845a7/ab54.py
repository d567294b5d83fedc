"""Round 54 in one process: the interleaved Hopper forward with its offset steps one after the other (FIBSPARSE_EXP54=0)
or software-pipelined (=1). Part 1: out and lse of both, bitwise, and their error against the
float64 reference, on dense, packed and shifted (seqlen_q < seqlen_k) batches whose lengths are not multiples of 8.
Part 2: forward and forward+backward medians (do_bench), three rounds alternating the order."""
import os, torch, triton
from fibsparse_ext import fibsparse_attn
from fibsparse_ext.varlen import fibsparse_attn_varlen
from fibsparse_ext.reference import fibsparse_attn_ref, fibsparse_attn_varlen_ref
from fibsparse_ext.schedules import make_schedule

def offsets_for(n):
    return torch.tensor(make_schedule("fixed", num_layers=1, window=128, max_distance=n).offsets(0), dtype=torch.int32,
                        device="cuda")

def both(fn):
    res = {}
    for flag in ("0", "1"):
        os.environ["FIBSPARSE_EXP54"] = flag
        res[flag] = fn()
    os.environ["FIBSPARSE_EXP54"] = "0"
    return res

bad = 0
for dtype in (torch.bfloat16, torch.float16):
    for B, Lq, Lk, H, Hkv, d in [(2, 1000, 1000, 32, 8, 128), (1, 4099, 4099, 16, 4, 64), (1, 1001, 3005, 8, 2, 128),
                                 (3, 777, 777, 8, 2, 64), (1, 16384, 16384, 32, 8, 128)]:
        torch.manual_seed(B * Lq + H + d)
        q = torch.randn(B, Lq, H, d, device="cuda", dtype=dtype)
        k, v = (torch.randn(B, Lk, Hkv, d, device="cuda", dtype=dtype) for _ in range(2))
        offs = offsets_for(Lk)
        r = both(lambda: fibsparse_attn(q, k, v, 128, offs, return_lse=True))
        same = torch.equal(r["0"][0], r["1"][0]) and torch.equal(r["0"][1], r["1"][1])
        ref, ref_lse = fibsparse_attn_ref(q.double(), k.double(), v.double(), 128, offs.tolist(), return_lse=True)
        err = [(x[0].double() - ref).abs().max().item() for x in (r["0"], r["1"])]
        lerr = [(x[1].double() - ref_lse).abs().max().item() for x in (r["0"], r["1"])]
        bad += not same and not (err[1] <= 2 * err[0] + 1e-6)
        print(f"{str(dtype)[6:]:8s} dense B{B} q{Lq} k{Lk} H{H}/{Hkv} d{d}: bitwise {same}; out err {err[0]:.3e} / "
              f"{err[1]:.3e}; lse err {lerr[0]:.3e} / {lerr[1]:.3e}")
    lens = [37, 1000, 513, 2048, 9]
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device="cuda")
    for H, Hkv, d in [(8, 2, 128), (16, 4, 64)]:
        torch.manual_seed(H + d)
        q = torch.randn(sum(lens), H, d, device="cuda", dtype=dtype)
        k, v = (torch.randn(sum(lens), Hkv, d, device="cuda", dtype=dtype) for _ in range(2))
        offs = offsets_for(max(lens))
        r = both(lambda: fibsparse_attn_varlen(q, k, v, cu, cu, max(lens), max(lens), 128, offs, return_lse=True))
        same = torch.equal(r["0"][0], r["1"][0]) and torch.equal(r["0"][1], r["1"][1])
        ref, ref_lse = fibsparse_attn_varlen_ref(q.double(), k.double(), v.double(), cu.cpu(), cu.cpu(), max(lens),
                                                 max(lens), 128, offs.tolist(), return_lse=True)
        err = [(x[0].double() - ref).abs().max().item() for x in (r["0"], r["1"])]
        bad += not same and not (err[1] <= 2 * err[0] + 1e-6)
        print(f"{str(dtype)[6:]:8s} packed {lens} H{H}/{Hkv} d{d}: bitwise {same}; out err {err[0]:.3e} / {err[1]:.3e}")
print("CHECK", "FAILED" if bad else "ok")

for total, H, Hkv, d in [(16384, 32, 8, 128), (65536, 32, 8, 128), (131072, 32, 8, 128), (65536, 16, 4, 64)]:
    torch.manual_seed(0)
    q = torch.randn(1, total, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(1, total, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    grad = torch.randn_like(q)
    offs = offsets_for(total)
    fwd = lambda: fibsparse_attn(q, k, v, 128, offs)
    fb = lambda: torch.autograd.grad(fibsparse_attn(q, k, v, 128, offs), [q, k, v], grad)
    times = {(f, w): [] for f in ("0", "1") for w in ("fwd", "f+b")}
    for rnd in range(3):
        for flag in (("0", "1") if rnd % 2 == 0 else ("1", "0")):
            os.environ["FIBSPARSE_EXP54"] = flag
            times[(flag, "fwd")].append(triton.testing.do_bench(fwd, warmup=25, rep=200))
            times[(flag, "f+b")].append(triton.testing.do_bench(fb, warmup=10, rep=150))
    os.environ["FIBSPARSE_EXP54"] = "0"
    label = f"{total} H{H}/{Hkv} d{d}"
    for w in ("fwd", "f+b"):
        a, b = times[("0", w)], times[("1", w)]
        print(f"{label:20s} {w}: in turn " + " ".join(f"{x:.4f}" for x in a) + "  pipelined " +
              " ".join(f"{x:.4f}" for x in b) + f"  min {min(a):.4f} -> {min(b):.4f} ({100 * (min(b) / min(a) - 1):+.1f}%)")
    del q, k, v, grad
