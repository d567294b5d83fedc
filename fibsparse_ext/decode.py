"""Decoding with a KV cache: attention for a few new query tokens per sequence
against cached keys, reading only the keys the pattern names (the compiled
op torch.ops.fibsparse.decode, CPU and CUDA; this module checks its inputs).

The cache can be a ring: a sequence's token at absolute position p lives in
slot p % capacity. Since no query ever reads a key older than the largest
distance, a ring of `required_capacity(...)` slots holds everything decoding
needs, and memory stays constant however long generation runs. Keys are cached
after rotary embedding at their absolute position, so wrap-around does not
disturb positions.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from . import _ops  # noqa: F401  (registers torch.ops.fibsparse.*)
from ._checks import check_op_inputs, check_scale
from ._offsets import (PADDING, OffsetsLike, as_offsets, band_argument, check_offset_values, check_window,
                       farthest_band_distance)
from .functional import default_scale


def largest_distance(window: int, offsets: torch.Tensor) -> int:
    """The farthest position behind a query that the pattern may read (a
    fractional p reads floor(p) + 1)."""
    real = offsets[offsets != PADDING]
    far = int(math.floor(real.max().item())) + (1 if offsets.is_floating_point() else 0) if real.numel() else 0
    return max(farthest_band_distance(window), far)


def required_capacity(window: int, offsets: OffsetsLike, new_tokens: int = 1) -> int:
    """Ring slots needed to decode `new_tokens` queries per call."""
    offsets = offsets if isinstance(offsets, torch.Tensor) else torch.tensor(offsets)
    return largest_distance(window, offsets) + new_tokens


def check_ring_capacity(capacity: int, window: int, offsets: torch.Tensor, new_tokens: int) -> None:
    needed = required_capacity(window, offsets, new_tokens)
    if needed > capacity:
        raise ValueError(f"cache too small: a ring must hold {needed} positions for window {window}, these "
                         f"offsets and {new_tokens} new token(s), it has {capacity}")


class KVCache:
    """One layer's cache for a batch: k, v of (batch, capacity, heads_kv, head_dim)
    and seqlens (batch,), the number of tokens written to each sequence so far."""

    def __init__(self, batch: int, capacity: int, heads_kv: int, head_dim: int, *, ring: bool,
                 dtype=torch.float32, device=None):
        for name, value in (("batch", batch), ("capacity", capacity), ("heads_kv", heads_kv), ("head_dim", head_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.k = torch.zeros(batch, capacity, heads_kv, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.seqlens = torch.zeros(batch, dtype=torch.int64, device=device)
        self.ring = ring

    @classmethod
    def wrap(cls, k: torch.Tensor, v: torch.Tensor, seqlens: torch.Tensor, ring: bool) -> "KVCache":
        """A KVCache over existing buffers (writes go into them)."""
        cache = cls.__new__(cls)
        cache.k, cache.v, cache.seqlens, cache.ring = k, v, seqlens, ring
        return cache

    @property
    def capacity(self) -> int:
        return self.k.shape[1]

    def check_write(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """The checks of write(), which all run before it writes anything."""
        for name, t in (("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"{name} must be a tensor (batch, new, heads_kv, head_dim), got {type(t).__name__}")
        expected = (self.k.shape[0], k.shape[1] if k.dim() == 4 else -1, *self.k.shape[2:])
        if k.dim() != 4 or tuple(k.shape) != expected or v.shape != k.shape:
            raise ValueError(f"k and v must be (batch, new, heads_kv, head_dim) = {expected}, got "
                             f"{tuple(k.shape)} and {tuple(v.shape)}")
        for name, t in (("k", k), ("v", v)):
            if t.device != self.k.device:
                raise ValueError(f"{name} must be on the cache's device {self.k.device}, got {t.device}")
            if not t.is_floating_point():
                raise ValueError(f"{name} must be a floating tensor, got {t.dtype}")

    def write(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Appends k, v (batch, new, heads_kv, head_dim) after each sequence's
        tokens. A ring keeps the last `capacity` positions; a linear cache
        refuses to overflow."""
        self.check_write(k, v)
        new = k.shape[1]
        if new == 0:
            return
        positions = self.seqlens[:, None] + torch.arange(new, device=k.device)  # (batch, new)
        if not self.ring and int(positions.max()) >= self.capacity:
            raise ValueError(f"cache full: sequences would reach {int(positions.max()) + 1} tokens, "
                             f"capacity is {self.capacity}")
        keep = slice(max(0, new - self.capacity), new)  # older ones would be overwritten in this same write
        slots = (positions[:, keep] % self.capacity)[..., None, None].expand(-1, -1, *k.shape[2:])
        self.k.scatter_(1, slots, k[:, keep].to(self.k.dtype))
        self.v.scatter_(1, slots, v[:, keep].to(self.v.dtype))
        self.seqlens += new


def fibsparse_attn_with_kvcache(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                cache_seqlens: torch.Tensor, window: int, offsets: OffsetsLike,
                                softmax_scale: Optional[float] = None, ring: bool = False,
                                return_lse: bool = False, k: Optional[torch.Tensor] = None,
                                v: Optional[torch.Tensor] = None):
    """Attention of new queries against a KV cache, in FlashAttention's
    flash_attn_with_kvcache convention.

    Args:
        q: (batch, new, heads, head_dim): the queries of the newest `new` tokens.
        k_cache, v_cache: (batch, capacity, heads_kv, head_dim).
        cache_seqlens: (batch,) ints: tokens in each sequence's cache. Without k, v
            the new tokens are among them: query t of sequence b is at position
            cache_seqlens[b] - new + t. Sequences may have different lengths.
        window, offsets: the pattern, as for fibsparse_attn (integer or fractional).
        ring: the cache is a ring (position p in slot p % capacity); it must hold
            every distance the newest queries read.
        k, v: (batch, new, heads_kv, head_dim), optional: the new tokens' keys and
            values, written into the cache in place after cache_seqlens[b] tokens
            first (cache_seqlens itself is not changed: add `new` to it after).
    Returns:
        out (batch, new, heads, head_dim) [, lse (batch, heads, new)].
    """
    # Every check, the compiled op's included, runs before k, v are written
    # into the cache, so that a refused call changes none of the caller's tensors.
    check_window(window)
    offsets = as_offsets(offsets, q, window, check_values=False)  # checked below, from the host copy
    scale = check_scale(default_scale(q, softmax_scale))
    check_op_inputs(q, k_cache, v_cache, offsets, band_argument(window), scale, "k_cache", "v_cache")
    batch, new, heads, head_dim = q.shape
    capacity = k_cache.shape[1]
    if (not isinstance(cache_seqlens, torch.Tensor) or cache_seqlens.shape != (batch,)
            or cache_seqlens.is_floating_point() or cache_seqlens.is_complex() or cache_seqlens.dtype == torch.bool):
        described = (f"{cache_seqlens.dtype} {tuple(cache_seqlens.shape)}" if isinstance(cache_seqlens, torch.Tensor)
                     else f"{type(cache_seqlens).__name__} {cache_seqlens!r}")
        raise ValueError(f"cache_seqlens must be an integer tensor of shape ({batch},), got {described}")
    lengths = cache_seqlens.to(device=q.device, dtype=torch.int64)
    if (k is None) != (v is None):
        raise ValueError("k and v must be given together (the new tokens' keys and values), or neither")
    if k is not None:
        if not isinstance(k, torch.Tensor) or k.dim() != 4 or k.shape[1] != new:
            raise ValueError(f"k must be (batch, new={new}, heads_kv, head_dim), got "
                             f"{tuple(k.shape) if isinstance(k, torch.Tensor) else type(k).__name__}")
        cache = KVCache.wrap(k_cache, v_cache, lengths.clone(), ring)  # written below, after the value checks
        cache.check_write(k, v)
        if k.dtype != k_cache.dtype or v.dtype != v_cache.dtype:
            raise ValueError(f"k and v must have the cache's dtype {k_cache.dtype}, got {k.dtype} and {v.dtype}")

    # Every value check reads one host copy of the lengths and offsets (one
    # device sync per call), and all of them run before anything is written,
    # so that a refused call changes nothing.
    host = torch.cat([lengths.double(), offsets.detach().flatten().double()]).cpu()
    host_offsets = host[batch:].view(offsets.shape).to(offsets.dtype)
    check_offset_values(host_offsets, window)
    if ring:
        check_ring_capacity(capacity, window, host_offsets, new)
    appended = new if k is not None else 0
    shortest, longest = (int(host[:batch].min()) + appended, int(host[:batch].max()) + appended) if batch else (new, new)
    if shortest < new:
        raise ValueError(f"cache_seqlens must count the {new} new token(s) already written, got {lengths.tolist()}")
    if not ring and longest > capacity:
        raise ValueError(f"cache_seqlens {(lengths + appended).tolist()} go beyond the cache's capacity {capacity}")
    if k is not None:
        cache.write(k, v)
        lengths = lengths + new
    out, lse = torch.ops.fibsparse.decode(q, k_cache, v_cache, lengths, offsets, band_argument(window), scale, ring)
    return (out, lse) if return_lse else out
