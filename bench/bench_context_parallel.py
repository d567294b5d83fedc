"""Context parallelism, side by side at each length: context_parallel_attn
(fwd and fwd+bwd per rank, peak memory per GPU, bytes sent and received per
rank, the exchange and key buffer alone, the kernels alone on that buffer), against one device running the whole sequence
where it fits, an all-gather of k and v followed by the same kernel over the
prefix, and PyTorch's ring context_parallel over SDPA (dense causal, the peer
a user would otherwise pick). A spot check compares the last rows of every
rank's output with the kernel run locally on the keys they read.

    torchrun --nproc-per-node 2 bench/bench_context_parallel.py [--seqlens 262144,1048576]
    torchrun --nproc-per-node 2 bench/bench_context_parallel.py --backend gloo --seqlens 4096   # CPU smoke run
"""
from __future__ import annotations

import argparse
import os
import time
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F

from fibsparse_ext import fibsparse_attn, make_schedule
from fibsparse_ext.accuracy import relative_error
from fibsparse_ext.distributed import _GatherKeys, context_parallel_attn, exchange_plan, reach_behind
from run_commit import measured_commit

HEAD_DIM = 64


def timed_ms(fn, device, runs: int, barrier: bool = True) -> float:
    """Median of `runs` calls after warm-up; with barrier, each call starts after
    a barrier so that all ranks time the same step (CUDA events on the GPU)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(runs):
        if barrier:
            dist.barrier()
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            fn()
            times.append((time.perf_counter() - begin) * 1e3)
    return sorted(times)[len(times) // 2]


def peak_gib(fn, device) -> float:
    """Peak memory allocated on this rank's GPU while fn runs (inputs included)."""
    if device.type != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def attempt(fn, device):
    """fn(), or None when it runs out of memory (then the caches are emptied)."""
    try:
        return fn()
    except torch.OutOfMemoryError:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return None


def gathered_prefix_attn(q, k, v, window, offsets, rank):
    """The baseline that moves everything: all-gather k and v (autograd through
    torch.distributed.nn), then the kernel over the whole prefix."""
    from torch.distributed.nn.functional import all_gather
    warnings.filterwarnings("ignore", message=".*all_gather is deprecated")  # its replacement is private API
    k_all, v_all = (torch.cat(all_gather(t.contiguous())[:rank + 1], 1) for t in (k, v))
    return fibsparse_attn(q, k_all, v_all, window, offsets)


def ring_sdpa_step_ms(seqlen, heads, dtype, device, runs) -> float | None:
    """PyTorch's ring context_parallel over SDPA (dense causal): fwd+bwd per
    rank. None where it does not run (no CUDA, or it fails)."""
    if device.type != "cuda":
        return None
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.experimental import context_parallel
    mesh = init_device_mesh("cuda", (dist.get_world_size(),))
    whole = [torch.randn(1, heads, seqlen, HEAD_DIM, device=device, dtype=dtype) for _ in range(4)]
    with context_parallel(mesh, buffers=whole, buffer_seq_dims=[2, 2, 2, 2], no_restore_buffers=set(whole)):
        q, k, v = (t.requires_grad_() for t in whole[:3])
        grad = whole[3]

        def step():
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            torch.autograd.grad(out, (q, k, v), grad)

        return timed_ms(step, device, runs)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seqlens", default="262144,1048576,4194304,16777216")
    parser.add_argument("--backend", default="nccl", choices=["nccl", "gloo"])
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--max-distance", type=int, default=16384, help="the farthest offset (the training length)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--ring-up-to", type=int, default=1048576, help="longest length for the ring SDPA peer")
    parser.add_argument("--gather-up-to", type=int, default=4194304,
                        help="longest length for the all-gather baseline (an out-of-memory error between its "
                             "collectives would leave the other ranks waiting)")
    args = parser.parse_args()
    device = torch.device("cpu")
    if args.backend == "nccl":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group(args.backend, device_id=device if args.backend == "nccl" else None)
    rank, world = dist.get_rank(), dist.get_world_size()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    offsets = make_schedule("fixed", num_layers=1, window=args.window, max_distance=args.max_distance).offsets(0)
    offsets = torch.tensor(offsets, dtype=torch.int32, device=device)
    if rank == 0:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        print(f"{world} x {name}, {args.backend}, torch {torch.__version__}, commit {measured_commit()}; batch 1, heads "
              f"{args.heads}, head_dim {HEAD_DIM}, {str(dtype)[6:]}, window {args.window}, offsets "
              f"{offsets.tolist()}; medians of {args.runs} steps, each after a barrier", flush=True)
    for seqlen in map(int, args.seqlens.split(",")):
        run_length(seqlen, args, offsets, rank, world, device, dtype)
    dist.destroy_process_group()


def run_length(seqlen, args, offsets, rank, world, device, dtype):
    per_rank = -(-seqlen // world)  # equal shards, the last one shorter if the length does not divide
    lengths = [per_rank] * (world - 1) + [seqlen - per_rank * (world - 1)]
    start = sum(lengths[:rank])
    torch.manual_seed(rank)
    q, k, v = (torch.randn(1, lengths[rank], args.heads, HEAD_DIM, device=device, dtype=dtype, requires_grad=True)
               for _ in range(3))
    grad = torch.randn_like(q)
    row_bytes = 2 * args.heads * HEAD_DIM * q.element_size()  # a k row and a v row
    plan = exchange_plan(lengths, args.window, offsets)

    def forward():
        return context_parallel_attn(q, k, v, args.window, offsets)

    def step():
        torch.autograd.grad(forward(), (q, k, v), grad)

    def gather_keys():  # the exchange and the key buffer, without the kernel
        with torch.no_grad():
            _GatherKeys.apply(k, v, plan, rank, None)

    fwd_ms, step_ms = timed_ms(forward, device, args.runs), timed_ms(step, device, args.runs)
    keys_ms = timed_ms(gather_keys, device, args.runs)
    # The kernels alone on the key buffer as built: what the rest (agreement, exchange, copies) adds.
    with torch.no_grad():
        k_all, v_all = (t.detach().requires_grad_() for t in _GatherKeys.apply(k, v, plan, rank, None))
    kernel_fwd_ms = timed_ms(lambda: fibsparse_attn(q, k_all, v_all, args.window, offsets), device, args.runs)
    kernel_step_ms = timed_ms(lambda: torch.autograd.grad(fibsparse_attn(q, k_all, v_all, args.window, offsets),
                                                          (q, k_all, v_all), grad), device, args.runs)
    del k_all, v_all
    peak = peak_gib(step, device)

    # Spot check: this rank's last rows against the kernel on the keys they read, run locally.
    with torch.no_grad():
        rows = min(256, lengths[rank])
        reach = max(far for far, _ in reach_behind(args.window, offsets))
        first_key = max(lengths[rank] - rows - reach, 0)
        error = float("nan")
        if rows and (start + lengths[rank] - rows - reach >= start or rank == 0):
            want = fibsparse_attn(q[:, -rows:], k[:, first_key:], v[:, first_key:], args.window, offsets)
            error = relative_error(forward()[:, -rows:], want)

    gathered = None if seqlen > args.gather_up_to else attempt(lambda: (timed_ms(lambda: torch.autograd.grad(
        gathered_prefix_attn(q, k, v, args.window, offsets, rank), (q, k, v), grad), device, args.runs),
        peak_gib(lambda: torch.autograd.grad(gathered_prefix_attn(q, k, v, args.window, offsets, rank), (q, k, v),
                                             grad), device)), device)
    del q, k, v, grad
    ring = None
    if seqlen <= args.ring_up_to:
        try:
            ring = ring_sdpa_step_ms(seqlen, args.heads, dtype, device, max(3, args.runs // 3))
        except Exception as error_:  # a prototype API: report why it did not run and carry on
            if rank == 0:
                print(f"ring context_parallel over SDPA did not run: {type(error_).__name__}: {error_}")
    sent = sum(hi - lo for (s, _), intervals in plan.sends.items() if s == rank for lo, hi in intervals)
    received = sum(hi - lo for lo, hi in plan.reads[rank])
    results = torch.tensor([fwd_ms, step_ms, keys_ms, kernel_fwd_ms, kernel_step_ms, peak, sent * row_bytes / 2**20,
                            received * row_bytes / 2**20, (seqlen - lengths[rank]) * row_bytes / 2**20, error,
                            *(gathered or (float("nan"),) * 2), ring or float("nan")],
                           dtype=torch.float64, device=device)
    everyone = [torch.empty_like(results) for _ in range(world)]
    dist.all_gather(everyone, results)

    single = None
    if rank == 0:
        def one_device():
            whole = [torch.randn(1, seqlen, args.heads, HEAD_DIM, device=device, dtype=dtype, requires_grad=True)
                     for _ in range(3)]
            whole_grad = torch.randn_like(whole[0])
            single_step = lambda: torch.autograd.grad(fibsparse_attn(*whole, args.window, offsets), whole, whole_grad)
            return (timed_ms(lambda: fibsparse_attn(*whole, args.window, offsets), device, args.runs, barrier=False),
                    timed_ms(single_step, device, args.runs, barrier=False), peak_gib(single_step, device))
        single = attempt(one_device, device)
    dist.barrier()
    if rank != 0:
        return
    print(f"\n--- seqlen {seqlen}, shards {lengths}")
    print("one device, whole sequence: " + (f"fwd {single[0]:.3f} ms, fwd+bwd {single[1]:.3f} ms, peak "
                                           f"{single[2]:.2f} GiB" if single else "out of memory"))
    print(f"{'rank':>4s} {'fwd ms':>8s} {'f+b ms':>8s} {'keys ms':>8s} {'kern f':>7s} {'kern f+b':>8s} {'peak GiB':>9s} {'sent MiB':>9s} "
          f"{'recv MiB':>9s} {'all-gather MiB':>15s} {'spot err':>9s} {'gather f+b ms':>14s} {'gather GiB':>11s} "
          f"{'ring SDPA f+b ms':>17s}")
    for r, row in enumerate(everyone):
        fwd, both, exch, kern_f, kern_fb, peak_, sent_, recv, gather, err, g_ms, g_peak, ring_ms = row.tolist()
        print(f"{r:4d} {fwd:8.3f} {both:8.3f} {exch:8.3f} {kern_f:7.3f} {kern_fb:8.3f} {peak_:9.2f} {sent_:9.1f} {recv:9.1f} {gather:15.1f} "
              f"{err:9.1e} {g_ms:14.3f} {g_peak:11.2f} {ring_ms:17.1f}")
    slowest = max(row[1].item() for row in everyone)
    fastest = min(row[1].item() for row in everyone)
    line = f"balance: slowest / fastest rank fwd+bwd {slowest / fastest:.2f}"
    if single:
        line += f"; speed-up over one device {single[1] / slowest:.2f}x on {world}"
    most_received = max(row[7].item() for row in everyone)
    line += f"; bytes received / all-gather's {most_received / max(row[8].item() for row in everyone):.3f}"
    ring_ms = max(row[12].item() for row in everyone)
    if ring_ms == ring_ms:
        line += f"; ring SDPA / ours (f+b) {ring_ms / slowest:.1f}x"
    print(line, flush=True)


if __name__ == "__main__":
    main()
