"""Packed variable-length batches: time and peak memory of fibsparse_attn_varlen.

1. One sequence through the packed path against the dense call, at 16k and 128k
   tokens (the packed path should cost nothing extra).
2. A packed batch of documents with lengths drawn log-uniformly from 128 to 16k
   (~128k tokens), against what a user would otherwise run: (a) padding every
   document to the longest with the dense kernel, (b) FlexAttention with a
   document mask and the same pattern, (c) torch's varlen_attn with a sliding
   window of the same size (no offsets: a cheaper pattern), and
   FlashAttention-4's varlen with a window when flash_attn.cute imports.
   "per token vs alone" divides the packed time per token by the one-sequence
   time per token at 16k.

CUDA events, warm-up, medians of back-to-back calls (bench/timing.py).

    python bench/bench_varlen.py [--quick]
"""
from __future__ import annotations

import argparse
import math

import torch

from fibsparse_ext import fibsparse_attn, fibsparse_attn_varlen, make_schedule
from run_commit import measured_commit
from timing import median_ms, peak_extra_mb

WINDOW = 128


def fibonacci_offsets(max_distance: int, device) -> torch.Tensor:
    offsets = make_schedule("fixed", num_layers=1, window=WINDOW, max_distance=max_distance).offsets(0)
    return torch.tensor(offsets, dtype=torch.int32, device=device)


def fwd_bwd_step(attend, inputs, grad):
    def step():
        out = attend(*inputs)
        torch.autograd.grad(out, inputs, grad)
    return step


def fwd_and_fwd_bwd_ms(attend, inputs, grad):
    return median_ms(lambda: attend(*inputs)), median_ms(fwd_bwd_step(attend, inputs, grad))


def random_inputs(shape_q, shape_k, dtype):
    q = torch.randn(shape_q, device="cuda", dtype=dtype, requires_grad=True)
    k = torch.randn(shape_k, device="cuda", dtype=dtype, requires_grad=True)
    v = torch.randn(shape_k, device="cuda", dtype=dtype, requires_grad=True)
    return q, k, v


def one_sequence(seqlen, heads, head_dim, dtype):
    """(dense fwd, dense fwd+bwd, packed fwd, packed fwd+bwd) ms for one sequence."""
    offsets = fibonacci_offsets(seqlen, "cuda")
    q, k, v = random_inputs((seqlen, heads, head_dim), (seqlen, heads, head_dim), dtype)
    grad = torch.randn_like(q)
    cu = torch.tensor([0, seqlen], dtype=torch.int32, device="cuda")
    packed = lambda q, k, v: fibsparse_attn_varlen(q, k, v, cu, cu, seqlen, seqlen, WINDOW, offsets)  # noqa: E731
    dense = lambda q, k, v: fibsparse_attn(  # noqa: E731
        q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), WINDOW, offsets)[0]
    rounds = [fwd_and_fwd_bwd_ms(f, (q, k, v), grad) for f in (dense, packed, dense, packed)]
    dense_ms = [min(rounds[0][i], rounds[2][i]) for i in range(2)]
    packed_ms = [min(rounds[1][i], rounds[3][i]) for i in range(2)]
    return dense_ms + packed_ms


def document_lengths(count, low, high, total, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logs = torch.empty(count, dtype=torch.float64).uniform_(math.log(low), math.log(high), generator=generator)
    lengths = logs.exp().round().long()
    lengths = (lengths.double() * (total / lengths.sum().item())).round().long().clamp(1, high)
    return lengths.tolist()


def flex_document_attention(lengths, offsets, heads, heads_kv):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    total = sum(lengths)
    document = torch.repeat_interleave(torch.arange(len(lengths), device="cuda"),
                                       torch.tensor(lengths, device="cuda"))
    attended = torch.zeros(max(lengths), dtype=torch.bool, device="cuda")
    attended[:WINDOW] = True
    attended[offsets[offsets < max(lengths)].long()] = True

    def mask_mod(b, h, q_idx, kv_idx):
        distance = q_idx - kv_idx
        same = document[q_idx] == document[kv_idx]
        return same & (distance >= 0) & attended[distance.clamp(0, max(lengths) - 1)]

    block_mask = create_block_mask(mask_mod, None, None, total, total, _compile=True)  # never the dense mask
    compiled = torch.compile(flex_attention)
    return lambda q, k, v: compiled(  # noqa: E731
        q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0), v.transpose(0, 1).unsqueeze(0),
        block_mask=block_mask, enable_gqa=heads != heads_kv)[0].transpose(0, 1)


def torch_varlen_window(cu, longest, heads, heads_kv):
    """torch's varlen_attn; without enable_gqa (older torch) k and v are repeated per query head."""
    import inspect

    from torch.nn.attention.varlen import varlen_attn
    group = heads // heads_kv
    if "enable_gqa" in inspect.signature(varlen_attn).parameters or group == 1:
        gqa = {"enable_gqa": True} if group > 1 else {}
        return lambda q, k, v: varlen_attn(q, k, v, cu, cu, longest, longest,  # noqa: E731
                                           window_size=(WINDOW - 1, 0), **gqa)
    return lambda q, k, v: varlen_attn(  # noqa: E731
        q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), cu, cu, longest, longest,
        window_size=(WINDOW - 1, 0))


def fa4_varlen_window(cu, longest):
    from flash_attn.cute import flash_attn_varlen_func
    return lambda q, k, v: flash_attn_varlen_func(  # noqa: E731
        q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=longest, max_seqlen_k=longest, causal=True,
        window_size=(WINDOW - 1, 0))[0]


def packed_batch(lengths, heads, heads_kv, head_dim, dtype, alone_ms_per_token):
    total, longest = sum(lengths), max(lengths)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    offsets = fibonacci_offsets(longest, "cuda")
    q, k, v = random_inputs((total, heads, head_dim), (total, heads_kv, head_dim), dtype)
    grad = torch.randn_like(q)
    rows = {}

    def measure(name, attend, inputs, grad):
        try:
            fwd, both = fwd_and_fwd_bwd_ms(attend, inputs, grad)
            rows[name] = (fwd, both, peak_extra_mb(fwd_bwd_step(attend, inputs, grad)))
        except Exception as error:  # a peer missing or failing on this machine: say so, keep going
            rows[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:100] if str(error) else ''}"

    fib = lambda q, k, v: fibsparse_attn_varlen(q, k, v, cu, cu, longest, longest, WINDOW, offsets)  # noqa: E731
    measure("fibsparse varlen", fib, (q, k, v), grad)

    padded = [torch.zeros(len(lengths), longest, t.shape[1], head_dim, device="cuda", dtype=dtype) for t in (q, k, v)]
    for t, src in zip(padded, (q, k, v)):
        for b, start in enumerate(cu[:-1].tolist()):
            t[b, :lengths[b]] = src.detach()[start:start + lengths[b]]
    padded = [t.requires_grad_() for t in padded]
    dense = lambda q, k, v: fibsparse_attn(q, k, v, WINDOW, offsets)  # noqa: E731
    measure("(a) padded, dense", dense, tuple(padded), torch.randn_like(padded[0]))
    del padded
    try:
        measure("(b) flex doc mask", flex_document_attention(lengths, offsets, heads, heads_kv), (q, k, v), grad)
    except Exception as error:
        rows["(b) flex doc mask"] = f"{type(error).__name__}: {str(error).splitlines()[0][:100]}"
    try:
        measure("(c) torch varlen w", torch_varlen_window(cu, longest, heads, heads_kv), (q, k, v), grad)
    except Exception as error:
        rows["(c) torch varlen w"] = f"{type(error).__name__}: {str(error).splitlines()[0][:100]}"
    try:
        measure("FA4 varlen window", fa4_varlen_window(cu, longest), (q, k, v), grad)
    except Exception as error:
        rows["FA4 varlen window"] = f"not run ({type(error).__name__}: {str(error).splitlines()[0][:80]})"

    print(f"\n{len(lengths)} documents, {total} tokens (lengths {min(lengths)}..{longest}), H={heads}/{heads_kv} "
          f"d={head_dim} window={WINDOW} K={offsets.numel()} {str(dtype)[6:]}")
    print(f"  {'':20s} {'fwd ms':>9s} {'fwd+bwd ms':>11s} {'peak MB':>9s} {'f+b vs fib':>11s}")
    fib_all = rows["fibsparse varlen"][1] if isinstance(rows["fibsparse varlen"], tuple) else float("nan")
    for name, row in rows.items():
        if isinstance(row, tuple):
            print(f"  {name:20s} {row[0]:9.3f} {row[1]:11.3f} {row[2]:9.0f} {row[1] / fib_all:10.2f}x")
        else:
            print(f"  {name:20s} {row}")
    if alone_ms_per_token is not None and isinstance(rows["fibsparse varlen"], tuple):
        per_token = [rows["fibsparse varlen"][i] / total for i in range(2)]
        print(f"  per token vs one 16k sequence alone: fwd {per_token[0] / alone_ms_per_token[0]:.2f}x, "
              f"fwd+bwd {per_token[1] / alone_ms_per_token[1]:.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="16k only, one packed configuration")
    args = parser.parse_args()
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, commit {measured_commit()}")
    dtype = torch.bfloat16
    print("\nOne sequence, H=8 d=64 window 128, Fibonacci offsets (alpha 1) up to the length: ms, min of two rounds")
    print(f"  {'seqlen':>7s} {'dense fwd':>10s} {'packed fwd':>11s} {'ratio':>6s} {'dense f+b':>10s} "
          f"{'packed f+b':>11s} {'ratio':>6s}")
    alone = None
    for seqlen in [16384] if args.quick else [16384, 131072]:
        dense_fwd, dense_all, packed_fwd, packed_all = one_sequence(seqlen, 8, 64, dtype)
        print(f"  {seqlen:7d} {dense_fwd:10.3f} {packed_fwd:11.3f} {packed_fwd / dense_fwd:6.3f} {dense_all:10.3f} "
              f"{packed_all:11.3f} {packed_all / dense_all:6.3f}")
        if seqlen == 16384:
            alone = (packed_fwd / seqlen, packed_all / seqlen)
    lengths = document_lengths(64, 128, 16384, 131072)
    configs = [(8, 8, 64)] if args.quick else [(8, 8, 64), (32, 8, 128)]
    for heads, heads_kv, head_dim in configs:
        same_shape_as_alone = (heads, heads_kv, head_dim) == (8, 8, 64)
        packed_batch(lengths, heads, heads_kv, head_dim, dtype, alone if same_shape_as_alone else None)


if __name__ == "__main__":
    main()
