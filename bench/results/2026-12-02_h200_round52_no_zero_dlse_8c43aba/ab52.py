"""Round 52 in one process: forward+backward with the loss on the output alone (lse's gradient undefined: the backward
gets no dlse) and with lse used at a zero gradient (a zero dlse, as every call got before the change). Per
configuration: gradients compared, each kernel's CUDA time (us, profiler, 5 steps, three alternating rounds, every
kernel), forward+backward medians."""
import torch, triton
from torch.profiler import profile, ProfilerActivity
from fibsparse_ext import fibsparse_attn
from fibsparse_ext.schedules import make_schedule

for total, H, Hkv, d in [(65536, 32, 8, 128), (131072, 32, 8, 128), (65536, 8, 8, 64)]:
    torch.manual_seed(0)
    q = torch.randn(1, total, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(1, total, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    grad = torch.randn_like(q)
    offs = torch.tensor(make_schedule("fixed", num_layers=1, window=128, max_distance=total).offsets(0),
                        dtype=torch.int32, device="cuda")
    def without_dlse():
        return torch.autograd.grad(fibsparse_attn(q, k, v, 128, offs), [q, k, v], grad)
    def zero_dlse():
        out, lse = fibsparse_attn(q, k, v, 128, offs, return_lse=True)
        return torch.autograd.grad([out, lse], [q, k, v], [grad, torch.zeros_like(lse)])
    steps = {"no dlse": without_dlse, "zero dlse": zero_dlse}
    label = f"{total} tokens H={H}/{Hkv} d={d}"
    a, b = without_dlse(), zero_dlse()
    print(f"{label}: gradients bitwise equal: {all(torch.equal(x, y) for x, y in zip(a, b))}")
    kern = {n: {} for n in steps}
    for rnd in range(3):
        for name in (list(steps) if rnd % 2 == 0 else list(steps)[::-1]):
            for _ in range(3): steps[name]()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5): steps[name]()
                torch.cuda.synchronize()
            for e in prof.key_averages():
                if e.device_time_total > 0:
                    kern[name].setdefault(e.key[:90], []).append((e.device_time_total / e.count, e.count / 5))
    for name in steps:
        for key, ts in kern[name].items():
            print(f"  {name:9s} {min(t for t, _ in ts):8.1f} us x{ts[0][1]:.0f} a step  {key}")
    tot = {n: [] for n in steps}
    for rnd in range(3):
        for name in (list(steps) if rnd % 2 == 0 else list(steps)[::-1]):
            tot[name].append(triton.testing.do_bench(steps[name], warmup=25, rep=150))
    for name in steps:
        print(f"  {name:9s} fwd+bwd ms " + " ".join(f"{x:.4f}" for x in tot[name]) + f"  min {min(tot[name]):.4f}")
    del q, k, v, grad
