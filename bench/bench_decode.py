"""Decode throughput and memory: one new token per sequence against a context
of 4k..1M tokens, batch 1 and 32, for fibsparse with its constant-size ring
cache (static and learned offsets), with a paged cache (static offsets, one
column pair per page size: the pages a sequence still reads, scattered over a
pool), and for SDPA over a full dense cache (and flash_attn_with_kvcache when
flash_attn is installed). CUDA events, warm-up, median. "fib" times the
checked API call (one host sync for the length checks); "kernel" times
torch.ops.fibsparse.decode alone, as a CUDA graph or a serving loop that checks
lengths once would see it. "paged" and "API paged" are the same two for the
paged cache (fibsparse_attn_with_paged_kvcache).

    python bench/bench_decode.py [--contexts 4096,32768,131072,1048576] [--batches 1,32] [--page-sizes 16,256]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from fibsparse_ext import make_schedule
from fibsparse_ext.decode import KVCache, fibsparse_attn_with_kvcache, largest_distance, required_capacity
from fibsparse_ext.paged import fibsparse_attn_with_paged_kvcache, pages_per_sequence_bound
from timing import graphed_ms, median_ms

HEADS, HEADS_KV, HEAD_DIM, WINDOW = 8, 8, 64, 128


def cache_mb(*tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", default="4096,32768,131072,1048576")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--page-sizes", default="16,256")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    page_sizes = list(map(int, args.page_sizes.split(","))) if args.page_sizes else []
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    offsets = make_schedule("fixed", num_layers=1, window=WINDOW, max_distance=4096).offsets(0)
    learned = torch.tensor(offsets, dtype=torch.float32, device=device) * 0.97
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"torch {torch.__version__}, {dtype}; heads {HEADS}/{HEADS_KV}, head_dim {HEAD_DIM}, window {WINDOW}, "
          f"offsets {offsets}")
    try:
        from flash_attn import flash_attn_with_kvcache
    except ImportError:
        flash_attn_with_kvcache = None
    print(f"flash_attn: {'installed' if flash_attn_with_kvcache else 'not installed (column left out)'}")
    columns = ["fib static", "kernel static", "fib learned", "kernel learned"]
    columns += [name for size in page_sizes for name in (f"API paged {size}", f"kernel paged {size}")]
    columns += ["SDPA full cache"]
    columns += ["flash kvcache"] if flash_attn_with_kvcache else []
    print(f"{'batch':>5s} {'context':>8s} | " + " | ".join(f"{c:>19s}" for c in columns))
    print(f"{'':>5s} {'':>8s} | " + " | ".join(f"{'tok/s':>9s} {'cache MB':>9s}" for _ in columns))
    scale = HEAD_DIM ** -0.5
    for batch in map(int, args.batches.split(",")):
        for context in map(int, args.contexts.split(",")):
            torch.manual_seed(0)
            q = torch.randn(batch, 1, HEADS, HEAD_DIM, device=device, dtype=dtype)
            lengths = torch.full((batch,), context, device=device)
            row = []
            for positions in (offsets, learned):
                capacity = required_capacity(WINDOW, torch.as_tensor(positions))
                cache = KVCache(batch, capacity, HEADS_KV, HEAD_DIM, ring=True, dtype=dtype, device=device)
                cache.k.normal_()
                cache.v.normal_()
                ms = median_ms(lambda: fibsparse_attn_with_kvcache(q, cache.k, cache.v, lengths, WINDOW, positions,
                                                                   ring=True), runs=50, device=device)
                row += [batch / ms * 1e3, cache_mb(cache.k, cache.v)]
                kernel_offsets = torch.as_tensor(positions, device=device)
                kernel_offsets = kernel_offsets if kernel_offsets.is_floating_point() else kernel_offsets.int()
                ms = median_ms(lambda: torch.ops.fibsparse.decode(q, cache.k, cache.v, lengths, kernel_offsets, [WINDOW],
                                                                  scale, True), runs=50, device=device)
                row += [batch / ms * 1e3, cache_mb(cache.k, cache.v)]
            kernel_offsets = torch.tensor(offsets, dtype=torch.int32, device=device)
            for page_size in page_sizes:
                k_pool, v_pool, table = paged_cache(batch, context, page_size, largest_distance(WINDOW, kernel_offsets),
                                                    device, dtype)
                ms = median_ms(lambda: fibsparse_attn_with_paged_kvcache(q, k_pool, v_pool, lengths, table, WINDOW,
                                                                         offsets), runs=50, device=device)
                row += [batch / ms * 1e3, cache_mb(k_pool, v_pool)]
                ms = median_ms(lambda: torch.ops.fibsparse.decode(q, k_pool, v_pool, lengths, kernel_offsets, [WINDOW],
                                                                  scale, False, table), runs=50, device=device)
                row += [batch / ms * 1e3, cache_mb(k_pool, v_pool)]
            row += dense_decode(q, batch, context, device, dtype, F.scaled_dot_product_attention, transpose=True)
            if flash_attn_with_kvcache:
                row += dense_decode(q, batch, context, device, dtype, flash_attn_with_kvcache, transpose=False)
            print(f"{batch:5d} {context:8d} | " + " | ".join(f"{row[i]:9.0f} {row[i + 1]:9.1f}"
                                                         for i in range(0, len(row), 2)), flush=True)
    if device.type == "cuda" and page_sizes:
        kernels_graphed(args, page_sizes, device, dtype, offsets)


def kernels_graphed(args, page_sizes, device, dtype, offsets):
    """The op alone, replayed from a CUDA graph of CALLS back-to-back calls (no
    host path at all): microseconds per call for the ring and each page size,
    and paged / ring."""
    calls = 20
    kernel_offsets = torch.tensor(offsets, dtype=torch.int32, device=device)
    farthest = largest_distance(WINDOW, kernel_offsets)
    scale = HEAD_DIM ** -0.5
    print(f"\nthe op alone, graphed ({calls} calls per replay), us per call")
    print(f"{'batch':>5s} {'context':>8s} | {'ring':>8s} | " + " | ".join(f"{'paged ' + str(p):>10s} {'/ ring':>6s}"
                                                                      for p in page_sizes))
    for batch in map(int, args.batches.split(",")):
        for context in map(int, args.contexts.split(",")):
            q = torch.randn(batch, 1, HEADS, HEAD_DIM, device=device, dtype=dtype)
            lengths = torch.full((batch,), context, device=device)
            cache = KVCache(batch, required_capacity(WINDOW, kernel_offsets.cpu()), HEADS_KV, HEAD_DIM, ring=True,
                            dtype=dtype, device=device)
            cache.k.normal_()
            cache.v.normal_()

            def ring():
                for _ in range(calls):
                    torch.ops.fibsparse.decode(q, cache.k, cache.v, lengths, kernel_offsets, [WINDOW], scale, True)

            ring_us = graphed_ms(ring) / calls * 1e3
            cells = []
            for page_size in page_sizes:
                k_pool, v_pool, table = paged_cache(batch, context, page_size, farthest, device, dtype)

                def paged():
                    for _ in range(calls):
                        torch.ops.fibsparse.decode(q, k_pool, v_pool, lengths, kernel_offsets, [WINDOW], scale, False,
                                                   table)

                paged_us = graphed_ms(paged) / calls * 1e3
                cells.append(f"{paged_us:10.2f} {paged_us / ring_us:5.2f}x")
            print(f"{batch:5d} {context:8d} | {ring_us:8.2f} | " + " | ".join(cells), flush=True)


def paged_cache(batch, context, page_size, farthest, device, dtype):
    """A pool and block table for `batch` sequences of `context` tokens, as a
    PagedKVCache holds them: each sequence keeps the pages of the positions
    decoding still reads, drawn at random from a pool of exactly the pages the
    batch can need; the entries of pages given back are -1."""
    per_sequence = pages_per_sequence_bound(farthest, 1, page_size)
    k_pool = torch.randn(batch * per_sequence, page_size, HEADS_KV, HEAD_DIM, device=device, dtype=dtype)
    v_pool = torch.randn_like(k_pool)
    columns = -(-context // page_size)
    first = max(0, context - 1 - farthest) // page_size
    table = torch.full((batch, columns), -1, dtype=torch.int32)
    table[:, first:] = torch.randperm(batch * per_sequence)[:batch * (columns - first)].view(batch, -1)
    return k_pool, v_pool, table.to(device)


def dense_decode(q, batch, context, device, dtype, attention, transpose):
    """(tok/s, cache MB) of dense attention of one token over a full cache of
    `context` tokens; NaN when the cache does not fit in memory."""
    try:
        shape = (batch, HEADS_KV, context, HEAD_DIM) if transpose else (batch, context, HEADS_KV, HEAD_DIM)
        k = torch.randn(shape, device=device, dtype=dtype)
        v = torch.randn_like(k)
        query = q.transpose(1, 2) if transpose else q
        kwargs = {"enable_gqa": True} if transpose and HEADS != HEADS_KV else {}
        ms = median_ms(lambda: attention(query, k, v, **kwargs), runs=50, device=device)
        result = [batch / ms * 1e3, cache_mb(k, v)]
        del k, v
        return result
    except (torch.OutOfMemoryError, RuntimeError):
        torch.cuda.empty_cache() if device.type == "cuda" else None
        return [float("nan"), float("nan")]


if __name__ == "__main__":
    main()
