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


def graphed_ms(fn, runs: int = 30) -> float:
    """Median time of fn replayed from a CUDA graph: the GPU's time for the
    step with no host path at all (each replay is one launch). Shows what the
    kernels cost when the host is not the limit, as in a training loop whose
    host work runs ahead of the GPU."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream, as torch.cuda.graphs asks
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return median_ms(graph.replay, runs=runs)


def host_us(fn, runs: int = 300, warmup: int = 20) -> float:
    """Host time per call in microseconds: calls queued back to back with no
    synchronization between them. Below the GPU time the host runs ahead; above
    it, the step is host-bound."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(runs):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / runs * 1e6


def peak_extra_mb(fn) -> float:
    """Peak memory allocated while fn runs, above what was allocated before."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def kernel_times_us(fn, steps: int) -> list[tuple[str, float, int]]:
    """Every GPU kernel fn launches, as (name, device time per call in us,
    launches per call), from torch.profiler over `steps` calls queued back to
    back, in the profiler's order: where a step's time goes, kernel by kernel."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    return [(e.key, e.device_time_total / steps, e.count // steps) for e in prof.key_averages()
            if e.device_time_total > 0]
