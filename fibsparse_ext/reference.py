"""The pure-PyTorch reference: the pattern and its fractional offsets, written for clarity and
exactness, differentiable by autograd in q, k, v and fractional positions.

It computes in float32 (float64 for float64 inputs), one block of queries at
a time, and checkpoints each block, so that neither (seqlen x seqlen) nor
(seqlen x (window + K) x head_dim) is ever held at once: forward and
backward at seqlen 16384, window 128 stay within a few GB.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.utils.checkpoint import checkpoint

from ._checks import check_qkv, check_scale
from ._offsets import OffsetsLike, as_offsets, check_window
from .functional import default_scale

# Elements of gathered keys/values per query block, bounding peak memory.
# Kept large on purpose: blocks above glibc's mmap threshold (32 MB at most)
# go back to the OS when freed; smaller ones fragmented the heap, and the
# RSS at seqlen 16384 grew to 12 GB although 1 GB was ever live.
_BLOCK_ELEMENTS = 2**26


def _gather_rows(x: torch.Tensor, rows: torch.Tensor, kv_heads: Optional[torch.Tensor],
                 valid: torch.Tensor) -> torch.Tensor:
    """x (batch, seqlen, heads_kv, dim) at `rows` -> (batch, *rows.shape, [heads_kv,] dim), zero where
    not `valid` (rows.shape): a key the pattern does not read never enters a product, where 0 times a
    non-finite value would be NaN."""
    gathered = x[:, rows] if kv_heads is None else x[:, rows, kv_heads]
    mask = valid.reshape(1, *valid.shape, *([1] * (gathered.dim() - 1 - valid.dim())))
    return torch.where(mask, gathered, 0.0)


class _Lerp(torch.autograd.Function):
    """(1 - f) * a + f * b where the row b has weight f: at f == 0 the value is
    a alone, so a non-finite b stays out of it, while d/df = b - a is still the
    one-sided derivative towards the older row (the contract's d/d(position)).
    The backward is written in differentiable ops."""

    @staticmethod
    def forward(a, b, f):
        return torch.where(f != 0, a + f * (b - a), a)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad):
        a, b, f = ctx.saved_tensors
        grad_b = torch.where(f != 0, grad * f, 0.0)
        return grad - grad_b, grad_b, grad * (b - a)


def _attend_block(q, k, v, offsets, start: int, window: int, scale: float, shift: int):
    """Output (batch, block, heads, dim) and lse (batch, heads, block) of one query block."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    batch, block, heads, dim = q.shape
    heads_kv = k.shape[2]
    group = heads // heads_kv
    # The scale multiplies each dot product, as in the CPU and tensor-core kernels and
    # FlashAttention: a product that overflows the accumulation type is an infinite
    # score even where its scaled value would fit (docs/semantics.md names the CUDA
    # kernels that scale q first).
    q, k, v = q.to(acc), k.to(acc), v.to(acc)
    pos = torch.arange(start, start + block, device=q.device) + shift

    # The dense band: distances 0 .. window-1, the same for every head.
    band_rows = pos[:, None] - torch.arange(window, device=q.device)
    band_valid = band_rows >= 0
    band_rows = band_rows.clamp(min=0)
    k_band = _gather_rows(k, band_rows, None, band_valid)  # (b, c, w, hkv, d)
    v_band = _gather_rows(v, band_rows, None, band_valid)
    q_grouped = q.view(batch, block, heads_kv, group, dim)
    scores = [torch.einsum("bchgd,bcwhd->bchgw", q_grouped, k_band).reshape(batch, block, heads, window) * scale]
    valid = [band_valid[:, None, :].expand(block, heads, window)]

    # The offsets, per head: a real position p reads (1 - f) row[pos - a] + f row[pos - a - 1].
    num_offsets = offsets.shape[-1]
    if num_offsets:
        # Integer distances stay integers (float32 would round those above 2^24).
        dist = offsets.expand(heads, num_offsets)
        dist = dist.to(acc) if offsets.is_floating_point() else dist.long()
        a = torch.floor(dist).detach().long()
        offset_valid = (dist >= 0) & (pos[:, None, None] - dist >= 0)  # (c, h, K)
        j0 = torch.where(offset_valid, pos[:, None, None] - a, 0)
        kv_heads = (torch.arange(heads, device=q.device) // group)[None, :, None]
        k_off, v_off = _gather_rows(k, j0, kv_heads, offset_valid), _gather_rows(v, j0, kv_heads, offset_valid)
        if offsets.is_floating_point():
            # f has gradient 1 in the position; at f == 0 the second row is
            # clamped to a valid one (the kernels do the same).
            frac = torch.where(offset_valid, dist - a, 0.0)[None, ..., None]
            j1 = (j0 - 1).clamp(min=0)
            frac = frac.expand_as(k_off)
            k_off = _Lerp.apply(k_off, _gather_rows(k, j1, kv_heads, offset_valid), frac)
            v_off = _Lerp.apply(v_off, _gather_rows(v, j1, kv_heads, offset_valid), frac)
        scores.append(torch.einsum("bchd,bchkd->bchk", q, k_off) * scale)
        valid.append(offset_valid)

    scores = torch.cat(scores, -1).masked_fill(~torch.cat(valid, -1), float("-inf"))
    # A query whose every score is -inf (a -inf key, or float32 overflow) has
    # lse -inf, weight 0 on every key, output 0 and zero gradients, as in
    # FlashAttention; its scores are replaced before logsumexp, whose
    # derivative there would be 0 / 0.
    dead = torch.isneginf(scores).all(-1, keepdim=True)
    scores = torch.where(dead, 0.0, scores)
    lse = torch.logsumexp(scores, -1)
    # A +inf score has no finite weight (inf / inf): like a NaN score, it makes
    # the query's lse, probabilities and output NaN.
    lse = torch.where(torch.isposinf(lse), float("nan"), lse)
    # Where the lse is finite, the weights are normalised as the kernels normalise
    # them, by the row's largest score and then their sum: exp(score - lse), with
    # lse rounded at the scores' magnitude, would not sum to 1 where the scores
    # are large. (The largest score only shifts the exponents; no gradient flows
    # through it.) Where it is NaN, exp(score - lse) makes every weight of the row
    # NaN, as in the kernels.
    top = scores.detach().amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, 0.0)
    weights = torch.exp(scores - top)
    normalised = weights / weights.sum(-1, keepdim=True)
    probs = torch.where(torch.isfinite(lse)[..., None], normalised, torch.exp(scores - lse[..., None]))
    probs = torch.where(dead, 0.0, probs)
    lse = torch.where(dead[..., 0], float("-inf"), lse)
    p_band = probs[..., :window].reshape(batch, block, heads_kv, group, window)
    out = torch.einsum("bchgw,bcwhd->bchgd", p_band, v_band).reshape(batch, block, heads, dim)
    if num_offsets:
        out = out + torch.einsum("bchk,bchkd->bchd", probs[..., window:], v_off)
    return out, lse.transpose(1, 2)


def fibsparse_attn_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, offsets: OffsetsLike,
                       softmax_scale: Optional[float] = None, return_lse: bool = False):
    """Reference for `fibsparse_attn`: same arguments, same results.

    Output has q's dtype; lse is float32, or float64 for float64 inputs.
    """
    check_window(window)
    check_qkv(q, k, v)
    offsets = as_offsets(offsets, q, window)
    batch, seqlen_q, heads, dim = q.shape
    seqlen_k, heads_kv = k.shape[1], k.shape[2]
    if seqlen_q > seqlen_k:
        raise ValueError(f"seqlen_q ({seqlen_q}) must not exceed seqlen_k ({seqlen_k}): queries are aligned to "
                         f"the last keys")
    scale = check_scale(default_scale(q, softmax_scale))
    shift = seqlen_k - seqlen_q
    window = min(window, seqlen_k)  # band distances >= seqlen_k are never attended

    per_query = max(1, batch * (window * heads_kv + offsets.shape[-1] * heads) * dim * 4)
    block = max(1, min(seqlen_q, _BLOCK_ELEMENTS // per_query))
    track = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, offsets))
    outs, lses = [], []
    for start in range(0, seqlen_q, block):
        q_block = q[:, start:start + block]
        args = (q_block, k, v, offsets, start, window, scale, shift)
        o, l = checkpoint(_attend_block, *args, use_reentrant=False) if track else _attend_block(*args)
        outs.append(o)
        lses.append(l)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    out = torch.cat(outs, 1).to(q.dtype) if outs else q.new_empty(q.shape)
    lse = torch.cat(lses, 2) if lses else q.new_empty((batch, heads, 0), dtype=acc)
    return (out, lse) if return_lse else out


def fibsparse_attn_varlen_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                              cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, window: int,
                              offsets: OffsetsLike, softmax_scale: Optional[float] = None, return_lse: bool = False):
    """Reference for `fibsparse_attn_varlen`: `fibsparse_attn_ref` on each
    sequence alone, concatenated (lse is (heads, total_q))."""
    q_bounds, k_bounds = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    scale = default_scale(q, softmax_scale)
    outs, lses = [], []
    for b in range(len(q_bounds) - 1):
        q_seq = q[q_bounds[b]:q_bounds[b + 1]].unsqueeze(0)
        k_seq, v_seq = (t[k_bounds[b]:k_bounds[b + 1]].unsqueeze(0) for t in (k, v))
        out, lse = fibsparse_attn_ref(q_seq, k_seq, v_seq, window, offsets, scale, return_lse=True)
        outs.append(out[0])
        lses.append(lse[0])
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    out = torch.cat(outs) if outs else q.new_empty(q.shape)
    lse = torch.cat(lses, 1) if lses else q.new_empty((q.shape[1], 0), dtype=acc)
    return (out, lse) if return_lse else out
