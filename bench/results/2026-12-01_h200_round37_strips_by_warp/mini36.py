"""Round 36 quick check: kernel times (torch.profiler, 5 calls) and f+b medians at 64k GQA 32/8 d 128, integer
offsets and fractional positions (stored dS)."""
import torch, triton
from torch.profiler import profile, ProfilerActivity
from fibsparse_ext import fibsparse_attn
from fibsparse_ext.schedules import make_schedule
torch.manual_seed(0)
L = 65536
q = torch.randn(1, L, 32, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
k, v = (torch.randn(1, L, 8, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
g = torch.randn_like(q)
offs = torch.tensor(make_schedule("fixed", num_layers=1, window=128, max_distance=L).offsets(0), dtype=torch.int32, device="cuda")
pos = (offs.float() * 0.97).requires_grad_(True)
for name, o, wrt in (("integer", offs, (q, k, v)), ("fractional", pos, (q, k, v, pos))):
    step = lambda: torch.autograd.grad(fibsparse_attn(q, k, v, 128, o), wrt, g)
    t = [triton.testing.do_bench(step, warmup=25, rep=150) for _ in range(2)]
    for _ in range(3): step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5): step()
        torch.cuda.synchronize()
    print(f"{name}: f+b ms {t[0]:.3f} {t[1]:.3f}")
    for e in prof.key_averages():
        if e.device_time_total > 0 and "fibsparse" in e.key:
            print(f"   {e.device_time_total / e.count:8.1f} us  {e.key[:110]}")
