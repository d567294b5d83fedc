"""Timing shared by the benchmarks: warm-up, then the median of many runs,
measured with CUDA events on the GPU (wall clock on the CPU)."""
import statistics
import time

import torch


def median_ms(fn, warmup: int = 5, runs: int = 30, device="cuda") -> float:
    on_gpu = torch.device(device).type == "cuda"
    for _ in range(warmup):
        fn()
    if on_gpu:
        torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        if on_gpu:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
