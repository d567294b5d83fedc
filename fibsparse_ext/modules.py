"""FibSparseAttention: a multi-head causal self-attention layer whose pattern is
one layer of an offset schedule (schedules.py)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ._checked_once import CheckedOnce
from ._offsets import MAX_WINDOW, band_argument, check_offset_values
from .decode import KVCache, check_ring_capacity, required_capacity
from .paged import PagedKVCache
from .functional import default_scale
from .rotary import apply_rotary, rotary_tables
from .schedules import Schedule
from .distributed import context_parallel_attn
from .varlen import check_packed_boundaries

# Learned alphas are kept above this, so positions stay positive and ordered.
MIN_ALPHA = 1e-3

# A layer's offsets (or learned alpha) are checked against its cache (that
# they fit a ring; that a paged cache was made for them) once per tensor
# version, so that a decode step reads nothing on the host.
_fits_cache = CheckedOnce()


def document_positions(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Each packed token's position within its document (0 at every boundary),
    computed on the device without a sync."""
    starts = torch.repeat_interleave(cu_seqlens[:-1].long(), cu_seqlens.diff(), output_size=total)
    return torch.arange(total, device=cu_seqlens.device) - starts


class FibSparseAttention(nn.Module):
    """Self-attention over (batch, seqlen, embed_dim) with layer `layer_idx` of `schedule`.

    Owns the qkv and output projections; with a `learned` schedule it also owns
    `alpha`, an nn.Parameter, and attends at fractional positions alpha * b_k.
    The offsets are fixed at construction and never depend on the input length,
    so a model runs at any length and only sees distances it was built with.
    A `dense` schedule gives ordinary causal attention (the baseline).
    """

    def __init__(self, embed_dim: int, num_heads: int, schedule: Schedule, layer_idx: int,
                 num_kv_heads: Optional[int] = None, rotary: bool = True, rotary_base: float = 10000.0,
                 bias: bool = False):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be a multiple of num_heads ({num_heads})")
        if num_kv_heads < 1 or num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        if rotary and (embed_dim // num_heads) % 2:
            raise ValueError(f"rotary embeddings rotate pairs of dimensions, so head_dim (embed_dim // num_heads = "
                             f"{embed_dim} // {num_heads} = {embed_dim // num_heads}) must be even; pass rotary=False "
                             f"for an odd head_dim")
        if not 0 <= layer_idx < schedule.num_layers:
            raise ValueError(f"layer_idx must be in [0, {schedule.num_layers}), got {layer_idx}")
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = embed_dim // num_heads
        self.schedule, self.layer_idx = schedule, layer_idx
        self.rotary, self.rotary_base = rotary, rotary_base
        self.qkv = nn.Linear(embed_dim, (num_heads + 2 * num_kv_heads) * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(num_heads * self.head_dim, embed_dim, bias=bias)

        self.window = None if schedule.is_dense else schedule.window
        if schedule.is_learned:
            self.alpha = nn.Parameter(torch.tensor(float(schedule.alpha(layer_idx))))
            self.register_buffer("base_distances", torch.tensor(schedule.base_distances(layer_idx),
                                                                dtype=torch.float32), persistent=False)
        elif not schedule.is_dense:
            offsets = torch.tensor(schedule.offsets(layer_idx), dtype=torch.int32)
            check_offset_values(offsets, self.window)  # once, so forward needs no host sync
            self.register_buffer("offsets", offsets, persistent=False)
        if schedule.is_dense:  # decoding reads a dense layer's cache as one band, with no offsets
            self.register_buffer("no_offsets", torch.empty(0, dtype=torch.int32), persistent=False)

    def positions(self) -> torch.Tensor:
        """The offsets this layer attends now: fractional alpha * b_k when learned."""
        if self.schedule.is_learned:
            return self.alpha.clamp(min=MIN_ALPHA) * self.base_distances
        return self.offsets

    def forward(self, x: torch.Tensor, start_pos: int = 0, cache: Optional[KVCache] = None,
                cu_seqlens: Optional[torch.Tensor] = None, max_seqlen: Optional[int] = None,
                context_parallel_group=None) -> torch.Tensor:
        """x (batch, seqlen, embed_dim) at positions start_pos.., or, with a cache,
        right after the tokens already in it (one cache per layer; see make_cache).
        With a cache, the positions come from it and start_pos is ignored.

        Packed documents: x (1, total, embed_dim) holding documents back to back,
        cu_seqlens int32 (documents + 1,) their boundaries (0, then running
        totals) and max_seqlen at least the longest; each document is attended
        (and its rotary positions counted) as if it were alone.

        Context parallelism: with context_parallel_group (a torch.distributed
        group), x is this rank's shard of one sequence, starting at position
        start_pos (distributed.context_parallel_attn; every rank calls)."""
        embed_dim = self.qkv.in_features
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != embed_dim:
            raise ValueError(f"x must be (batch, seqlen, embed_dim={embed_dim}), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        batch, seqlen, _ = x.shape
        if cu_seqlens is not None:
            if batch != 1 or cache is not None or start_pos != 0 or max_seqlen is None:
                raise ValueError(f"packed documents (cu_seqlens) need x of shape (1, total, embed_dim) and "
                                 f"max_seqlen, and take no cache or start_pos; got x {tuple(x.shape)}, "
                                 f"max_seqlen {max_seqlen}, cache {'given' if cache is not None else None}, "
                                 f"start_pos {start_pos}")
            check_packed_boundaries(cu_seqlens, cu_seqlens, seqlen, seqlen, max_seqlen, max_seqlen)
        if context_parallel_group is not None and (cache is not None or cu_seqlens is not None):
            raise ValueError("context parallelism (context_parallel_group) takes a shard of one sequence, without a "
                             "cache or packed documents")
        qkv = self.qkv(x).view(batch, seqlen, -1, self.head_dim)
        q, k, v = qkv.split([self.num_heads, self.num_kv_heads, self.num_kv_heads], dim=2)
        if cache is not None:  # per-sequence positions: batches may be ragged
            positions = cache.seqlens[:, None] + torch.arange(seqlen, device=x.device)
        elif cu_seqlens is not None:  # positions restart in every document
            positions = document_positions(cu_seqlens, seqlen)
        else:
            positions = torch.arange(start_pos, start_pos + seqlen, device=x.device)
        if self.rotary:  # q and k side by side in qkv's output: rotated in one pass (half the kernels)
            cos, sin = rotary_tables(positions, self.head_dim, self.rotary_base)
            q, k = apply_rotary(qkv[:, :, :self.num_heads + self.num_kv_heads], cos, sin).split(
                [self.num_heads, self.num_kv_heads], dim=2)
        if cu_seqlens is not None:
            out = self._attend_packed(q[0], k[0], v[0], cu_seqlens, max_seqlen)
            return self.out_proj(out.reshape(1, seqlen, -1))
        if isinstance(cache, PagedKVCache):
            return self.out_proj(self._attend_paged(q, k, v, cache).reshape(batch, seqlen, -1))
        if context_parallel_group is not None:
            # A dense layer is a band longer than any sequence (the same on every rank).
            window, offsets = (MAX_WINDOW, []) if self.window is None else (self.window, self.positions())
            out = context_parallel_attn(q, k, v, window, offsets, group=context_parallel_group)
            return self.out_proj(out.reshape(batch, seqlen, -1))
        if cache is not None and cache.holds_tokens() and self.window is None and not cache.ring:
            out = self._attend_dense_cache(q, k, v, cache)
        elif cache is not None and cache.holds_tokens():  # decoding after the cached tokens
            window, offsets = (cache.capacity, self.no_offsets) if self.window is None else (self.window,
                                                                                            self.positions())
            if not cache.skips_host_checks():  # a compiled step checks before its graph runs
                self.check_cache_fits(cache, seqlen)
            # Appends k, v after checking everything: a refused call changes no cache.
            out = cache.attend(q, k, v, window, offsets, offsets_fit=True)
        else:  # a whole sequence (or the prompt of a fresh cache): the fused kernels
            if cache is not None:
                cache.write(k, v)
            out = self._attend(q, k, v)
        return self.out_proj(out.reshape(batch, seqlen, -1))

    def check_cache_fits(self, cache: KVCache, new: int) -> None:
        """This layer's offsets are valid and a ring cache holds what `new`
        queries read: checked on the host once per version of the offsets (or
        of the learned alpha), so that decode steps read no value from the GPU.
        A paged cache holds the offsets it was made with (its pages are given
        back by them): they must still be this layer's."""
        if isinstance(cache, PagedKVCache):
            def check_same_offsets():
                now = self.positions().detach()
                if now.shape != cache.offsets.shape or not torch.equal(now.to(cache.offsets), cache.offsets):
                    raise ValueError(f"this paged cache was made for offsets {cache.offsets.tolist()}, and the layer "
                                     f"attends {now.tolist()} now (a learned alpha changed?): make a new cache")

            _fits_cache.run((self.alpha if self.schedule.is_learned else self.offsets, cache.offsets), (),
                           check_same_offsets)
            return
        if self.window is None:
            if cache.ring:  # a band as long as the ring: only one new token fits
                check_ring_capacity(cache.capacity, cache.capacity, torch.empty(0, dtype=torch.int32), new)
            return

        def check():
            positions = self.positions().detach().cpu()
            check_offset_values(positions, self.window)  # a learned alpha may have become NaN
            if cache.ring:
                check_ring_capacity(cache.capacity, self.window, positions, new)

        _fits_cache.run((self.alpha if self.schedule.is_learned else self.offsets,), (cache.capacity, new, cache.ring),
                       check)

    def _attend(self, q, k, v):
        if self.window is None:
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 is_causal=True, enable_gqa=self.num_heads != self.num_kv_heads)
            return out.transpose(1, 2)
        out, _ = torch.ops.fibsparse.fwd(q, k, v, self.positions(), band_argument(self.window), default_scale(q, None))
        return out

    def _attend_dense_cache(self, q, k, v, cache: KVCache):
        """A dense layer's decode step: the new keys appended, then SDPA over
        the whole cache with the slots after each query's position masked.
        The shapes do not depend on the lengths (a CUDA graph can hold the
        step), and SDPA spreads a long cache's keys over the GPU, where the
        decode kernel, built for a window and a few offsets, gives each query
        one block."""
        new = q.shape[1]
        cache.write(k, v)  # checks that the tokens fit before writing
        slots = torch.arange(cache.capacity, device=q.device)
        last = cache.seqlens[:, None] - new + torch.arange(new, device=q.device)  # (batch, new) positions
        visible = slots <= last[..., None]  # causal among the new tokens too
        out = F.scaled_dot_product_attention(q.transpose(1, 2), cache.k.transpose(1, 2), cache.v.transpose(1, 2),
                                             attn_mask=visible[:, None], enable_gqa=self.num_heads != self.num_kv_heads)
        return out.transpose(1, 2)

    def _attend_paged(self, q, k, v, cache: PagedKVCache):
        """With a paged cache (make_cache(page_size=...)): a prompt fills fresh
        sequences, one per batch slot; a decode call appends and attends, as
        attend() (the host plans its pages), or, in a step whose owner
        reserved its pages before it (DecodeStep), as attend_reserved()."""
        if not cache.active_slots:
            if q.shape[0] != cache.block_table.shape[0]:
                raise ValueError(f"a prompt fills every batch slot of a paged cache: got {q.shape[0]} sequences "
                                 f"for max_batch={cache.block_table.shape[0]}")
            cache.add_sequences(k, v)
            return self._attend(q, k, v)
        if not (cache.decode_reserved and torch.compiler.is_compiling()):  # (DecodeStep checks before)
            self.check_cache_fits(cache, q.shape[1])
        if cache.decode_reserved:
            return cache.attend_reserved(q, k, v)
        return cache.attend(q, k, v)

    def _attend_packed(self, q, k, v, cu_seqlens, max_seqlen):
        if self.window is None:  # dense causal: the band alone, as long as the longest document
            window, offsets = max(max_seqlen, 1), torch.empty(0, dtype=torch.int32, device=q.device)
        else:
            window, offsets = self.window, self.positions()
        out, _ = torch.ops.fibsparse.varlen_fwd(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, offsets,
                                                band_argument(window), default_scale(q, None))
        return out

    def make_cache(self, batch: int, max_seqlen: int, dtype=None, device=None, page_size: Optional[int] = None):
        """A cache for decoding up to max_seqlen tokens one at a time. Sparse
        layers get a ring of constant size, whatever max_seqlen, or with
        page_size a PagedKVCache of as many pages as `batch` sequences can hold
        (its block table sized for max_seqlen; it keeps the offsets the layer
        has now); dense layers need every position (a KVCache, with or without
        page_size)."""
        if page_size is not None and (isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1):
            raise ValueError(f"page_size must be an int >= 1 (or None for a ring), got {page_size!r}")
        weight = self.qkv.weight
        dtype, device = dtype or weight.dtype, device or weight.device
        if page_size is not None and self.window is not None:
            offsets = self.positions().detach()
            num_pages = PagedKVCache.pages_needed(self.window, offsets, page_size, batch)
            cache = PagedKVCache(num_pages, page_size, self.num_kv_heads, self.head_dim, self.window, offsets,
                                 max_batch=batch, dtype=dtype, device=device)
            cache.fix_block_table(max_seqlen)
            return cache
        if self.window is None:
            capacity, ring = max_seqlen, False
        else:
            capacity, ring = required_capacity(self.window, self.positions().detach()), True
        return KVCache(batch, capacity, self.num_kv_heads, self.head_dim, ring=ring, dtype=dtype, device=device)

    def extra_repr(self) -> str:
        pattern = "dense causal" if self.window is None else (
            f"window={self.window}, {self.schedule.name}/{self.schedule.base} layer {self.layer_idx}")
        return (f"heads={self.num_heads}, kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, {pattern}, "
                f"rotary={self.rotary}")
