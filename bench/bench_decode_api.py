"""What the checked decode API costs over the bare op: the time per call of
fibsparse_attn_with_kvcache against torch.ops.fibsparse.decode alone, and,
when the call also appends the new token's k, v, against the op plus the
cache write (the slot computed on the device, one scatter per tensor: the
least a caller appending into a cache must launch). Ring cache, bf16, 8
heads, head_dim 64, window 128, one new token per sequence; medians of
back-to-back calls between CUDA events (bench/timing.py), so a host path
slower than the GPU shows.

Columns (us per call): "op"; "API" (offsets as a list, lengths unchanged
between calls: checked once); "API tensor" (the same with the offsets as a
device tensor, as a model layer passes them); "op+write"; "API k,v" (check_lengths=True, lengths
unchanged); "API k,v unchecked" (check_lengths=False: the write guarded on
the device); "KVCache.attend" (the owner's path: host copy of the lengths,
one slice copy per tensor, seqlens advanced on the device). The ratios are
API / op and API k,v / op+write.

    python bench/bench_decode_api.py [--contexts 4096,131072] [--batches 1,32]
"""
from __future__ import annotations

import argparse

import torch

from fibsparse_ext import make_schedule
from fibsparse_ext.decode import KVCache, _write_at_device_positions, fibsparse_attn_with_kvcache, required_capacity
from timing import median_ms

HEADS, HEAD_DIM, WINDOW = 8, 64, 128


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", default="4096,131072")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    offsets = make_schedule("fixed", num_layers=1, window=WINDOW, max_distance=4096).offsets(0)
    offsets_tensor = torch.tensor(offsets, dtype=torch.int32, device=device)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"torch {torch.__version__}, {dtype}; heads {HEADS}, head_dim {HEAD_DIM}, window {WINDOW}, "
          f"offsets {offsets}; us per call")
    names = ["op", "API", "API tensor", "op+write", "API k,v", "API k,v unchecked", "KVCache.attend"]
    print(f"{'batch':>5s} {'context':>8s} | " + " ".join(f"{n:>17s}" for n in names)
          + " | API/op  API tensor/op  k,v/op+write")
    scale = HEAD_DIM ** -0.5
    for batch in map(int, args.batches.split(",")):
        for context in map(int, args.contexts.split(",")):
            torch.manual_seed(0)
            q = torch.randn(batch, 1, HEADS, HEAD_DIM, device=device, dtype=dtype)
            k, v = torch.randn_like(q), torch.randn_like(q)
            cache = KVCache(batch, required_capacity(WINDOW, offsets), HEADS, HEAD_DIM, ring=True, dtype=dtype,
                            device=device)
            cache.k.normal_()
            cache.v.normal_()
            lengths = torch.full((batch,), context, device=device)
            after = lengths + 1

            def op_and_write():
                _write_at_device_positions(cache.k, cache.v, lengths, k, v, True, guard=False)
                torch.ops.fibsparse.decode(q, cache.k, cache.v, after, offsets_tensor, [WINDOW], scale, True)

            cache.seqlens.fill_(context)
            calls = [
                lambda: torch.ops.fibsparse.decode(q, cache.k, cache.v, lengths, offsets_tensor, [WINDOW], scale,
                                                   True),
                lambda: fibsparse_attn_with_kvcache(q, cache.k, cache.v, lengths, WINDOW, offsets, ring=True),
                lambda: fibsparse_attn_with_kvcache(q, cache.k, cache.v, lengths, WINDOW, offsets_tensor, ring=True),
                op_and_write,
                lambda: fibsparse_attn_with_kvcache(q, cache.k, cache.v, lengths, WINDOW, offsets, ring=True, k=k, v=v),
                lambda: fibsparse_attn_with_kvcache(q, cache.k, cache.v, lengths, WINDOW, offsets, ring=True, k=k, v=v,
                                                    check_lengths=False),
                lambda: cache.attend(q, k, v, WINDOW, offsets_tensor),
            ]
            us = [median_ms(call, warmup=10, runs=200, device=device) * 1e3 for call in calls]
            print(f"{batch:5d} {context:8d} | " + " ".join(f"{t:17.1f}" for t in us)
                  + f" | {us[1] / us[0]:6.2f}x {us[2] / us[0]:13.2f}x {us[4] / us[3]:13.2f}x", flush=True)


if __name__ == "__main__":
    main()
