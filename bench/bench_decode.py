"""Decode throughput and memory: one new token per sequence against a context
of 4k..1M tokens, batch 1 and 32, for fibsparse with its constant-size ring
cache (static and learned offsets) and for SDPA over a full dense cache.
CUDA events, warm-up, median.

    python bench/bench_decode.py [--contexts 4096,32768,131072,1048576] [--batches 1,32]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from fibsparse_ext import make_schedule
from fibsparse_ext.decode import KVCache, fibsparse_attn_with_kvcache, required_capacity
from timing import median_ms

HEADS, HEADS_KV, HEAD_DIM, WINDOW = 8, 8, 64, 128


def cache_mb(*tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", default="4096,32768,131072,1048576")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    offsets = make_schedule("fixed", num_layers=1, window=WINDOW, max_distance=4096).offsets(0)
    learned = torch.tensor(offsets, dtype=torch.float32, device=device) * 0.97
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"torch {torch.__version__}, {dtype}; heads {HEADS}/{HEADS_KV}, head_dim {HEAD_DIM}, window {WINDOW}, "
          f"offsets {offsets}")
    print(f"{'batch':>5s} {'context':>8s} | {'fib static':>19s} | {'fib learned':>19s} | {'SDPA full cache':>19s}")
    print(f"{'':>5s} {'':>8s} | {'tok/s':>9s} {'cache MB':>9s} | {'tok/s':>9s} {'cache MB':>9s} | "
          f"{'tok/s':>9s} {'cache MB':>9s}")
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
            try:
                k = torch.randn(batch, HEADS_KV, context, HEAD_DIM, device=device, dtype=dtype)
                v = torch.randn_like(k)
                qt = q.transpose(1, 2)
                ms = median_ms(lambda: F.scaled_dot_product_attention(qt, k, v), runs=50, device=device)
                row += [batch / ms * 1e3, cache_mb(k, v)]
                del k, v
            except (torch.OutOfMemoryError, RuntimeError):
                row += [float("nan"), float("nan")]
            print(f"{batch:5d} {context:8d} | " + " | ".join(f"{row[i]:9.0f} {row[i + 1]:9.1f}" for i in (0, 2, 4)),
                  flush=True)


if __name__ == "__main__":
    main()
