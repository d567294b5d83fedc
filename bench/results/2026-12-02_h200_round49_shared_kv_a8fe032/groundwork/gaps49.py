"""Every CUDA kernel of one forward+backward step (no name filter), in launch order, with its duration and the idle
gap before it, from the profiler's timeline; then the step's time between CUDA events, eager and graph-replayed."""
import sys, statistics
import torch
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
    step = lambda: torch.autograd.grad(fibsparse_attn(q, k, v, 128, offs), [q, k, v], grad)
    for _ in range(5): step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        step(); torch.cuda.synchronize()
    evs = sorted([e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA],
                 key=lambda e: e.time_range.start)
    print(f"== {total} tokens H={H}/{Hkv} d={d}: {len(evs)} GPU events")
    prev_end = None; busy = 0
    for e in evs:
        gap = e.time_range.start - prev_end if prev_end is not None else 0
        dur = e.time_range.end - e.time_range.start; busy += dur
        print(f"  gap {gap:8.1f}  dur {dur:8.1f}  {e.name[:110]}")
        prev_end = e.time_range.end
    print(f"  first start -> last end {evs[-1].time_range.end - evs[0].time_range.start:.1f} us, busy {busy:.1f} us")
    times = []
    for _ in range(30):
        a, b = torch.cuda.Event(True), torch.cuda.Event(True)
        torch.cuda.synchronize(); a.record(); step(); b.record(); torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    print(f"  eager step median {statistics.median(times)*1000:.1f} us")
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3): step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g): step()
    times = []
    for _ in range(30):
        a, b = torch.cuda.Event(True), torch.cuda.Event(True)
        torch.cuda.synchronize(); a.record(); g.replay(); b.record(); torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    print(f"  graphed step median {statistics.median(times)*1000:.1f} us")
    del q, k, v, grad, g
