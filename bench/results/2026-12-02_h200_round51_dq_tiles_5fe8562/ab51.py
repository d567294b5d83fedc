"""Round 51 in one process: the dq pass with offsets from stored dS at head_dim 128 as main has it (FIBSPARSE_EXP51
unset) and as blocks of heads x tiles (4x2, 4x4, 2x2). Per configuration: gradients of both compared (bitwise
expected), each kernel's CUDA time (us, profiler, 5 steps, three rounds alternating), forward+backward medians."""
import os, sys
import torch, triton
from torch.profiler import profile, ProfilerActivity
from fibsparse_ext import fibsparse_attn, fibsparse_attn_varlen
from fibsparse_ext.schedules import make_schedule

LENGTHS = [16384, 8192, 12288, 4096, 16384, 8192]
CONFIGS = [("dense", 16384, "int"), ("dense", 65536, "int"), ("dense", 131072, "int"), ("dense", 65536, "frac"),
           ("packed", 65536, "int")]
VARIANTS = ["0", "4x2", "4x4", "2x2"]
def use(var):
    if var != "0": os.environ["FIBSPARSE_EXP51"] = var
    else: os.environ.pop("FIBSPARSE_EXP51", None)
for name, total, kind in CONFIGS:
    torch.manual_seed(0)
    packed = name == "packed"
    longest = max(LENGTHS) if packed else total
    q = torch.randn(total, 32, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(total, 8, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    grad = torch.randn_like(q)
    offs = torch.tensor(make_schedule("fixed", num_layers=1, window=128, max_distance=longest).offsets(0),
                        dtype=torch.int32, device="cuda")
    if kind == "frac": offs = (offs.float() * 0.97).requires_grad_(True)
    inputs = [q, k, v] + ([offs] if kind == "frac" else [])
    if packed:
        cu = torch.tensor([0] + torch.tensor(LENGTHS).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
        attend = lambda: fibsparse_attn_varlen(q, k, v, cu, cu, longest, longest, 128, offs)
    else:
        attend = lambda: fibsparse_attn(q[None], k[None], v[None], 128, offs)[0]
    step = lambda: torch.autograd.grad(attend(), inputs, grad)
    label = f"{name} {total} tokens H=32/8 d=128 {kind}"
    grads = {}
    for var in VARIANTS:
        use(var)
        grads[var] = step()
    for var in VARIANTS[1:]:
        same = all(torch.equal(a, b) for a, b in zip(grads["0"], grads[var]))
        print(f"{label}: {var} gradients bitwise equal to main's: {same}")
    del grads
    kern = {v_: {} for v_ in VARIANTS}
    for rnd in range(4):
        for var in (VARIANTS[rnd:] + VARIANTS[:rnd]):
            use(var)
            for _ in range(3): step()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5): step()
                torch.cuda.synchronize()
            for e in prof.key_averages():
                if e.device_time_total > 0 and "dq_from" in e.key:
                    kern[var].setdefault(e.key[:95], []).append(e.device_time_total / e.count)
    for var in VARIANTS:
        for key, ts in kern[var].items():
            print(f"  v{var} {min(ts):8.1f} us (rounds {' '.join(f'{t:.1f}' for t in ts)})  {key}")
    tot = {v_: [] for v_ in VARIANTS}
    for rnd in range(4):
        for var in (VARIANTS[rnd:] + VARIANTS[:rnd]):
            use(var)
            tot[var].append(triton.testing.do_bench(step, warmup=25, rep=150))
    for var in VARIANTS:
        print(f"  v{var} fwd+bwd ms " + " ".join(f"{x:.4f}" for x in tot[var]) +
              f"  min {min(tot[var]):.4f}  vs v0: {min(tot[var]) / min(tot['0']) - 1:+.2%}")
    del q, k, v, grad, offs
