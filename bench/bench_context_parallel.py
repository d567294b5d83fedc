"""Context parallelism: per-rank time of context_parallel_attn (fwd and
fwd+bwd) against one device running the whole sequence, the rows each rank
receives against what an all-gather of the prefix would move, and whether the
ranks' times are balanced (every query reads window + K keys, so contiguous
shards should do equal work).

    torchrun --nproc-per-node 2 bench/bench_context_parallel.py [--seqlen 131072]
    torchrun --nproc-per-node 2 bench/bench_context_parallel.py --backend gloo --seqlen 4096   # CPU check
"""
from __future__ import annotations

import argparse
import os
import subprocess
import time

import torch
import torch.distributed as dist

from fibsparse_ext import fibsparse_attn, make_schedule
from fibsparse_ext.distributed import context_parallel_attn, exchange_plan


def timed_ms(fn, device, runs: int = 10, every_rank: bool = True) -> float:
    """Median of `runs` calls after warm-up (CUDA events on the GPU); with
    every_rank, each call starts after a barrier so all ranks time the same step."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(runs):
        if every_rank:
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seqlen", type=int, default=131072)
    parser.add_argument("--backend", default="nccl", choices=["nccl", "gloo"])
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--max-distance", type=int, default=16384, help="the farthest offset (the training length)")
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
    per_rank = -(-args.seqlen // world)  # equal shards, the last one shorter if the length does not divide
    lengths = [per_rank] * (world - 1) + [args.seqlen - per_rank * (world - 1)]
    start = sum(lengths[:rank])
    torch.manual_seed(rank)
    q, k, v = (torch.randn(1, lengths[rank], args.heads, 64, device=device, dtype=dtype, requires_grad=True)
               for _ in range(3))
    grad = torch.randn_like(q)

    def forward():
        return context_parallel_attn(q, k, v, args.window, offsets)

    def step():
        torch.autograd.grad(forward(), (q, k, v), grad)

    fwd_ms, step_ms = timed_ms(forward, device), timed_ms(step, device)
    plan = exchange_plan(lengths, args.window, offsets)
    received = sum(hi - lo for lo, hi in plan.reads[rank])
    row_bytes = 2 * args.heads * 64 * q.element_size()  # a k row and a v row
    results = torch.tensor([fwd_ms, step_ms, received * row_bytes / 2**20, start * row_bytes / 2**20],
                           dtype=torch.float64, device=device)
    everyone = [torch.empty_like(results) for _ in range(world)]
    dist.all_gather(everyone, results)

    if rank == 0:
        whole = [torch.randn(1, args.seqlen, args.heads, 64, device=device, dtype=dtype, requires_grad=True)
                 for _ in range(3)]
        whole_grad = torch.randn_like(whole[0])
        single_fwd = timed_ms(lambda: fibsparse_attn(*whole, args.window, offsets), device, every_rank=False)
        single_step = timed_ms(lambda: torch.autograd.grad(fibsparse_attn(*whole, args.window, offsets), whole,
                                                           whole_grad), device, every_rank=False)
    dist.barrier()
    if rank == 0:
        commit = os.environ.get("FIBSPARSE_COMMIT") or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        print(f"{world} x {name}, {args.backend}, torch {torch.__version__}, commit {commit}; seqlen {args.seqlen} "
              f"(shards {lengths}), heads {args.heads}, head_dim 64, {str(dtype)[6:]}, window {args.window}, "
              f"offsets {offsets.tolist()}")
        print(f"one device, whole sequence: fwd {single_fwd:.3f} ms, fwd+bwd {single_step:.3f} ms")
        print(f"{'rank':>4s} {'fwd ms':>8s} {'f+b ms':>8s} {'received MiB':>13s} {'all-gather MiB':>15s}")
        for r, row in enumerate(everyone):
            fwd, both, got, gather = row.tolist()
            print(f"{r:4d} {fwd:8.3f} {both:8.3f} {got:13.1f} {gather:15.1f}")
        slowest = max(row[1].item() for row in everyone)
        fastest = min(row[1].item() for row in everyone)
        print(f"balance: slowest / fastest rank fwd+bwd {slowest / fastest:.2f}; speed-up over one device "
              f"{single_step / slowest:.2f}x on {world}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
