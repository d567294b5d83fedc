"""Timing shared by the benchmarks: warm-up, then the median of many runs,
measured with CUDA events on the GPU (wall clock on the CPU)."""
import statistics
import time

import torch


def median_ms(fn, warmup: int = 5, runs: int = 30, device="cuda") -> float:
    """On the GPU the calls are queued back to back between pairs of events and
    synchronized once at the end (as triton.testing.do_bench does), so that a
    call's host-side work overlaps the previous call's kernels the way it does
    in a training loop; a host path slower than the kernels still shows."""
    on_gpu = torch.device(device).type == "cuda"
    for _ in range(warmup):
        fn()
    if not on_gpu:
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    for start, end in zip(starts, ends):
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in zip(starts, ends))
