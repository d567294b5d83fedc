"""Paged KV caches, in FlashAttention's block_table convention
(flash_attn_with_kvcache(..., block_table=...)): the keys and values of many
sequences live in one pool of fixed-size pages, and each sequence's row of a
block table names its pages in position order. Position j of sequence b is row
j % page_size of page block_table[b, j // page_size].

A query reads only its window and offsets, never further back than the
pattern's largest distance (decode.largest_distance), so a page whose every
position lies further behind than that from the newest token can be given to
another sequence. PagedKVCache does this: each sequence's memory stays bounded
as with a ring, while sequences of any length join and leave one shared pool
(continuous batching).

- fibsparse_attn_with_paged_kvcache: the checked entry point for a block table
  the caller manages (one host copy per call, of the offsets and the outcome of
  the checks of lengths and block table, before anything is written).
- PagedKVCache: one layer's pool and block table, managed with a host-side
  mirror, so its calls need no device sync.

Any page_size >= 1 works: the kernels find a key's page with one division of
32-bit positions, whatever the size.
"""
from __future__ import annotations

from collections import deque
from typing import Optional, Sequence, Union

import torch

from . import _ops  # noqa: F401  (registers torch.ops.fibsparse.*)
from ._checks import check_block_table, check_cache_seqlens, check_new_tokens, check_op_inputs, check_scale
from ._offsets import OffsetsLike, as_offsets, band_argument, check_offset_values, check_window
from .decode import largest_distance
from .functional import default_scale

IntsLike = Union[torch.Tensor, Sequence[int]]


def pages_spanned(first: int, end: int, page_size: int) -> range:
    """The logical pages (block table columns) that hold positions [first, end)."""
    return range(first // page_size, -(-end // page_size)) if end > first else range(0)


def pages_per_sequence_bound(farthest: int, new_tokens: int, page_size: int) -> int:
    """The most pages a PagedKVCache sequence holds: from a call of
    `new_tokens` queries on, it keeps the pages of positions [L - farthest,
    L + new) (L its length before the call), n = farthest + new consecutive
    positions, which span at most (n - 2) // page_size + 2 pages (when the
    first sits in the last row of a page; at most ceil(n / page_size) + 1)."""
    return (max(farthest + new_tokens, 1) - 2) // page_size + 2


def check_block_table_values(lengths: torch.Tensor, block_table: torch.Tensor, new_tokens: int, farthest: int,
                             num_pages: int, page_size: int) -> None:
    """The values of a call's lengths (after its new tokens) and of the block
    table entries it reads, on host tensors: every sequence holds its new
    tokens and fits its pages, and the pages that hold positions
    [length - new - farthest, length) are pages of the pool, none named twice
    (in one sequence or across sequences: the new tokens are written there)."""
    capacity = block_table.shape[1] * page_size
    bad = ((lengths < new_tokens) | (lengths > capacity)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"cache_seqlens[{bad[0]}] would be {int(lengths[bad[0]])} with the new tokens: a sequence "
                         f"must hold its {new_tokens} new token(s) and fit its pages (block_table's "
                         f"pages_per_sequence {block_table.shape[1]} x page_size {page_size} = {capacity} positions)")
    first = (lengths - new_tokens - farthest).clamp(min=0)
    columns = torch.arange(block_table.shape[1])
    read = (columns >= (first // page_size)[:, None]) & (columns * page_size < lengths[:, None])
    outside = (read & ((block_table < 0) | (block_table >= num_pages))).nonzero().tolist()
    if outside:
        b, column = outside[0]
        raise ValueError(f"block_table[{b}, {column}] is {int(block_table[b, column])}; the pages a call reads (those "
                         f"of positions {int(first[b])} .. {int(lengths[b]) - 1} of sequence {b}) must be in "
                         f"[0, num_pages={num_pages})")
    pages = block_table[read]
    values, counts = pages.unique(return_counts=True)
    if (counts > 1).any():
        page = int(values[counts > 1][0])
        where = (read & (block_table == page)).nonzero().tolist()
        raise ValueError(f"block_table names page {page} more than once among the pages a call reads, at "
                         f"{where[:2]} (sequence, column): a page may hold positions of only one sequence")


def _farthest_on_device(window: int, offsets: torch.Tensor) -> torch.Tensor:
    """decode.largest_distance as a 0-d tensor on the offsets' device (no
    sync): padding (-1) is below every real distance, and a fractional p reads
    floor(p) + 1."""
    if offsets.numel() == 0:
        return offsets.new_full((), window - 1, dtype=torch.float64)
    largest = offsets.detach().max().double()
    return (largest.floor() + 1 if offsets.is_floating_point() else largest).clamp(min=window - 1)


def _block_table_flags(lengths: torch.Tensor, block_table: torch.Tensor, new_tokens: int, farthest: torch.Tensor,
                       num_pages: int, page_size: int) -> torch.Tensor:
    """Whether any of check_block_table_values' rules is broken, computed where
    the tensors live (no sync): one number per rule, for the host copy that
    reads everything at once; check_block_table_values then names the entry."""
    capacity = block_table.shape[1] * page_size
    bad_length = ((lengths < new_tokens) | (lengths > capacity)).any()
    first = (lengths - new_tokens - farthest).clamp(min=0).long()
    columns = torch.arange(block_table.shape[1], device=block_table.device)
    read = (columns >= (first // page_size)[:, None]) & (columns * page_size < lengths[:, None])
    inside = (block_table >= 0) & (block_table < num_pages)
    outside = (read & ~inside).any()
    # Count each page read (one more bin for the entries not read): a count of 2 is a page named twice.
    pages = torch.where(read & inside, block_table.long(), num_pages).flatten()
    counts = torch.zeros(num_pages + 1, dtype=torch.int32, device=block_table.device)
    counts.index_add_(0, pages, torch.ones_like(pages, dtype=torch.int32))
    twice = (counts[:num_pages] > 1).any()
    return torch.stack([bad_length, outside, twice])


def fibsparse_attn_with_paged_kvcache(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                      cache_seqlens: torch.Tensor, block_table: torch.Tensor, window: int,
                                      offsets: OffsetsLike, softmax_scale: Optional[float] = None,
                                      return_lse: bool = False, k: Optional[torch.Tensor] = None,
                                      v: Optional[torch.Tensor] = None):
    """Attention of new queries against a paged KV cache, in FlashAttention's
    flash_attn_with_kvcache(..., block_table=) convention.

    Args:
        q: (batch, new, heads, head_dim): the queries of the newest `new` tokens.
        k_cache, v_cache: (num_pages, page_size, heads_kv, head_dim): the pool.
            Any page_size >= 1.
        cache_seqlens: (batch,) ints: tokens in each sequence. Without k, v the
            new tokens are among them: query t of sequence b is at position
            cache_seqlens[b] - new + t.
        block_table: int32 (batch, pages_per_sequence): position j of sequence b
            is row j % page_size of page block_table[b, j // page_size]. Only the
            entries of the pages a call reads (positions cache_seqlens[b] - new -
            largest distance .. cache_seqlens[b] - 1) need to name pages; the
            others may hold anything (e.g. -1 for pages already given back).
        window, offsets: the pattern, as for fibsparse_attn (integer or fractional).
        k, v: (batch, new, heads_kv, head_dim), optional, in the cache's dtype:
            written into their pages after cache_seqlens[b] tokens first
            (cache_seqlens itself is not changed: add `new` to it after).
    Returns:
        out (batch, new, heads, head_dim) [, lse (batch, heads, new)].

    Every check runs before anything is written, so a refused call changes no
    cache. The rules on cache_seqlens and block_table are evaluated on their
    device, and one host copy per call reads their outcome with the offsets:
    one device sync on CUDA, of a few numbers whatever the table's size (a
    refused call copies the table to name the entry at fault). PagedKVCache,
    whose block tables are valid by construction, skips it.
    """
    check_window(window)
    offsets = as_offsets(offsets, q, window, check_values=False)  # checked below, from the host copy
    scale = check_scale(default_scale(q, softmax_scale))
    check_op_inputs(q, k_cache, v_cache, offsets, band_argument(window), scale, "k_cache", "v_cache", paged=True)
    check_block_table(q, k_cache, block_table)
    batch, new = q.shape[0], q.shape[1]
    check_cache_seqlens(cache_seqlens, batch)
    if (k is None) != (v is None):
        raise ValueError("k and v must be given together (the new tokens' keys and values), or neither")
    if k is not None:
        check_new_tokens(k, v, q, k_cache)
    lengths = cache_seqlens.to(device=q.device, dtype=torch.int64)

    # The block table's rules are evaluated where it lives; one host copy then
    # reads their outcome with the offsets (a device sync), before anything is
    # written. Only a refused call copies the block table itself, to name the
    # entry at fault.
    appended = new if k is not None else 0
    num_pages, page_size = k_cache.shape[0], k_cache.shape[1]
    flags = _block_table_flags(lengths + appended, block_table, new, _farthest_on_device(window, offsets), num_pages,
                               page_size)
    host = torch.cat([offsets.detach().flatten().double(), flags.double()]).cpu()
    check_offset_values(host[:offsets.numel()].view(offsets.shape).to(offsets.dtype), window)
    if host[offsets.numel():].any():
        host_offsets = offsets.detach().cpu()
        check_block_table_values((lengths + appended).cpu(), block_table.cpu().long(), new,
                                 largest_distance(window, host_offsets), num_pages, page_size)
    if k is not None:
        write_new_tokens(k_cache, v_cache, block_table, lengths, k, v)
        lengths = lengths + new
    out, lse = torch.ops.fibsparse.decode(q, k_cache, v_cache, lengths, offsets, band_argument(window), scale, False,
                                          block_table)
    return (out, lse) if return_lse else out


def write_new_tokens(k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
                     lengths: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Writes k, v (batch, new, heads_kv, head_dim) at positions lengths[b] ..
    lengths[b] + new - 1 of each sequence, into the pages block_table names
    (checked by the caller; computed on the device, no sync)."""
    page_size = k_cache.shape[1]
    positions = lengths[:, None] + torch.arange(k.shape[1], device=k.device)  # (batch, new)
    pages = block_table.gather(1, positions // page_size).long()
    rows = positions % page_size
    k_cache[pages, rows] = k
    v_cache[pages, rows] = v


def _to_device(values: list, device: torch.device) -> torch.Tensor:
    """A host list of ints as an int64 tensor on `device`, without a sync: a
    CUDA copy goes through pinned memory, asynchronously."""
    host = torch.tensor(values, dtype=torch.int64)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def _int_list(values: IntsLike, name: str) -> list:
    """Ints from a list or tensor (a device tensor is copied to the host: one sync)."""
    if isinstance(values, torch.Tensor):
        if values.dim() != 1 or values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
            raise ValueError(f"{name} must be a 1-D integer tensor or a list of ints, got {values.dtype} "
                             f"{tuple(values.shape)}")
        return values.tolist()
    if not isinstance(values, (list, tuple)) or any(isinstance(x, bool) or not isinstance(x, int) for x in values):
        raise ValueError(f"{name} must be a 1-D integer tensor or a list of ints, got {values!r}")
    return list(values)


def _offset_rows(offsets: OffsetsLike) -> int:
    """Rows of per-head offsets (heads, K), or 1 for one shared row."""
    if isinstance(offsets, torch.Tensor):
        return offsets.shape[0] if offsets.dim() == 2 else 1
    per_head = isinstance(offsets, (list, tuple)) and offsets and isinstance(offsets[0], (list, tuple))
    return len(offsets) if per_head else 1


class _Sequence:
    """The host mirror of one sequence: its length and the pages holding
    block table columns first_column, first_column + 1, ... in order (those
    before first_column were given back)."""

    def __init__(self):
        self.length = 0
        self.first_column = 0
        self.pages = deque()


class PagedKVCache:
    """One layer's paged KV cache for a changing batch of sequences.

    k, v: the pool, (num_pages + 1, page_size, heads_kv, head_dim) (the last
    page is never handed out: a write through a -1 entry lands there); block_table:
    int32 (max_batch, columns), one row per batch slot, -1 where no page is
    held (columns grow as sequences do); seqlens: int64 (max_batch,), each
    slot's length (0 for a free slot).

    Lifecycle: sequences join with their prompt's keys and values
    (add_sequences from a padded prompt, add_packed_sequences from a packed
    one), taking free batch slots; each decode call (attend) appends the new
    tokens' keys and values, first giving back the pages no query can read any
    more (every position in them further behind the newest token than the
    pattern's largest distance), then taking pages from the pool as needed;
    remove_sequence gives a sequence's pages and slot back. A sequence never
    holds more than pages_per_sequence_bound(farthest, new, page_size) pages,
    so a pool of max_batch times that many pages never runs out.

    The page assignment lives on the host (a mirror of the block table), so
    the block table this cache builds is valid by construction: its calls
    check shapes only, and need no device sync (index updates travel to the
    device through pinned memory). The compiled op still checks lengths and
    pages on the device (CUDA) or on every call (CPU).
    """

    def __init__(self, num_pages: int, page_size: int, heads_kv: int, head_dim: int, window: int,
                 offsets: OffsetsLike, *, max_batch: int, dtype=torch.float32, device=None):
        for name, value in (("num_pages", num_pages), ("page_size", page_size), ("heads_kv", heads_kv),
                            ("head_dim", head_dim), ("max_batch", max_batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if num_pages > 2**31 - 1:
            raise ValueError(f"num_pages must be at most 2^31 - 1 (block tables are int32), got {num_pages}")
        device = torch.device(device if device is not None else "cpu")
        self.window = check_window(window)
        # One page more than asked, never handed out: a write through a -1 block
        # table entry (a position no page holds) lands there (index -1), so a
        # call the kernel then refuses changes no sequence's keys.
        self.k = torch.zeros(num_pages + 1, page_size, heads_kv, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        # The pattern, checked once: its own copy of the offsets (pages are given
        # back by them: a later change of the caller's tensor must not move them),
        # on the device as the op reads them.
        like_q = self.k.new_empty(1, 1, _offset_rows(offsets), head_dim)  # as_offsets reads q's heads, dtype, device
        self.offsets = as_offsets(offsets, like_q, window).detach().clone()
        self.farthest = largest_distance(window, self.offsets.cpu())
        self.block_table = torch.full((max_batch, 1), -1, dtype=torch.int32, device=device)
        self.seqlens = torch.zeros(max_batch, dtype=torch.int64, device=device)
        self._free_pages = list(range(num_pages - 1, -1, -1))  # popped from the end: pages 0, 1, ... first
        self._slots: list = [None] * max_batch  # a _Sequence per occupied slot
        # A decode step replayed from a CUDA graph (reserve / attend_reserved):
        # tokens reserved for every sequence since the host lengths were last
        # brought up to date, the bounds within which a reservation changes no
        # page, and whether the block table may still be reallocated.
        self._pending, self._quiet, self._table_fixed = 0, (0, 0), False
        # Set by a decode step (DecodeStep) while it runs, after its reserve():
        # the model's decode calls then take attend_reserved().
        self.decode_reserved = False

    # ---- What the cache holds ----

    @property
    def page_size(self) -> int:
        return self.k.shape[1]

    @property
    def num_pages(self) -> int:
        return self.k.shape[0] - 1  # (the last page is the sink, never handed out)

    @property
    def num_free_pages(self) -> int:
        return len(self._free_pages)

    @property
    def active_slots(self) -> list:
        """The batch slots that hold a sequence, in order."""
        return [slot for slot, seq in enumerate(self._slots) if seq is not None]

    def length(self, slot: int) -> int:
        self._catch_up()
        return self._sequence(slot).length

    def pages_of(self, slot: int) -> list:
        """The pages a sequence holds, oldest positions first."""
        self._catch_up()
        return list(self._sequence(slot).pages)

    @staticmethod
    def pages_needed(window: int, offsets: OffsetsLike, page_size: int, batch: int, new_tokens: int = 1) -> int:
        """Pages enough for `batch` sequences of any length that decode
        `new_tokens` tokens per call."""
        offsets = offsets if isinstance(offsets, torch.Tensor) else torch.tensor(offsets)
        return batch * pages_per_sequence_bound(largest_distance(window, offsets), new_tokens, page_size)

    # ---- Sequences joining and leaving ----

    def add_sequences(self, k: torch.Tensor, v: torch.Tensor, lengths: Optional[IntsLike] = None) -> list:
        """New sequences from a padded prompt: k, v (n, max_len, heads_kv,
        head_dim), sequence i holding rows 0 .. lengths[i] - 1 (all max_len by
        default; a list, or a tensor read on the host: one sync for a device
        one). Keeps the positions decoding can still read. Returns the batch
        slots they took, in order."""
        self._check_prompt(k, v, 4, "(n, max_len, heads_kv, head_dim)")
        count, max_len = k.shape[0], k.shape[1]
        lengths = [max_len] * count if lengths is None else _int_list(lengths, "lengths")
        if len(lengths) != count or any(not 0 <= n <= max_len for n in lengths):
            raise ValueError(f"lengths must hold {count} ints in [0, max_len={max_len}], got {lengths}")
        rows = [i * max_len for i in range(count)]
        return self._admit(k.reshape(-1, *k.shape[2:]), v.reshape(-1, *v.shape[2:]), rows, lengths)

    def add_packed_sequences(self, k: torch.Tensor, v: torch.Tensor, cu_seqlens: IntsLike) -> list:
        """New sequences from a packed prompt (FlashAttention's varlen
        convention): k, v (total, heads_kv, head_dim), sequence i holding rows
        cu_seqlens[i] .. cu_seqlens[i + 1] - 1 (a list, or a tensor read on the
        host: one sync for a device one). Returns the batch slots they took."""
        self._check_prompt(k, v, 3, "(total, heads_kv, head_dim)")
        bounds = _int_list(cu_seqlens, "cu_seqlens")
        if (len(bounds) < 1 or bounds[0] != 0 or bounds[-1] != k.shape[0]
                or any(b < a for a, b in zip(bounds, bounds[1:]))):
            raise ValueError(f"cu_seqlens must start at 0, never decrease and end at k's rows ({k.shape[0]}), "
                             f"got {bounds}")
        lengths = [b - a for a, b in zip(bounds, bounds[1:])]
        return self._admit(k, v, bounds[:-1], lengths)

    def remove_sequence(self, slot: int) -> None:
        """Gives a sequence's pages and batch slot back."""
        self._catch_up()
        seq = self._sequence(slot)
        self._free_pages.extend(reversed(seq.pages))
        self._slots[slot] = None
        self.block_table[slot].fill_(-1)
        self.seqlens[slot] = 0

    # ---- Decoding ----

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: Optional[Sequence[int]] = None,
               softmax_scale: Optional[float] = None, return_lse: bool = False):
        """One decode call: appends k, v (n, new, heads_kv, head_dim) to the
        sequences in `slots` (default: every active slot, in order) and attends
        their queries q (n, new, heads, head_dim) against them. Returns out
        (n, new, heads, head_dim) [, lse (n, heads, new)], as
        fibsparse_attn_with_paged_kvcache."""
        self._catch_up()
        slots = self.active_slots if slots is None else list(slots)
        if any(isinstance(s, bool) or not isinstance(s, int) for s in slots) or len(set(slots)) != len(slots):
            raise ValueError(f"slots must be distinct ints, got {slots}")
        for slot in slots:
            self._sequence(slot)
        scale = self._check_call(q, k, v, softmax_scale, len(slots), "slot")
        new = q.shape[1]

        lengths = self._take_pages(slots, new)
        rows = [self._pool_row(self._slots[slot], length + t) for slot, length in zip(slots, lengths)
                for t in range(new)]
        slots_device, lengths_after, rows = _to_device(slots + [n + new for n in lengths] + rows, self.k.device).split(
            [len(slots), len(slots), len(rows)])
        self.k.view(-1, *self.k.shape[2:]).index_copy_(0, rows, k.reshape(-1, *k.shape[2:]))
        self.v.view(-1, *self.v.shape[2:]).index_copy_(0, rows, v.reshape(-1, *v.shape[2:]))
        self.seqlens.index_copy_(0, slots_device, lengths_after)
        out, lse = torch.ops.fibsparse.decode(q, self.k, self.v, lengths_after, self.offsets,
                                              band_argument(self.window), scale, False,
                                              self.block_table.index_select(0, slots_device))
        return (out, lse) if return_lse else out

    # ---- A decode step replayed from a CUDA graph ----
    # attend() plans on the host and copies that plan's rows to the device on
    # every call; a graph can hold neither. Split in two, the host half
    # (reserve: pages given back and taken, the block table updated) runs
    # before each replay, and the device half (attend_reserved: rows found
    # through the block table, the write, the lengths advanced, the kernel) is
    # what the graph holds. Between page boundaries reserve() is a counter.

    def fix_block_table(self, max_length: int) -> None:
        """Widens the block table to hold positions below max_length (rounded
        up to whole pages; a wider table stays as wide) and never reallocates
        it again (a CUDA graph holds its address): a call or prompt that needs
        more columns is refused."""
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be an int >= 1, got {max_length!r}")
        self._catch_up()
        columns = -(-max_length // self.page_size)
        if columns > self.block_table.shape[1]:
            self._widen_block_table(columns)
        self._table_fixed = True

    def reserve(self, new_tokens: int = 1) -> None:
        """The host half of a decode call of `new_tokens` tokens for every
        sequence: the pages they need, taken (and those no query reads any
        more, given back) before the call runs. Every batch slot must hold a
        sequence. Cheap between page boundaries (no device work at all)."""
        if isinstance(new_tokens, bool) or not isinstance(new_tokens, int) or new_tokens < 1:
            raise ValueError(f"new_tokens must be an int >= 1, got {new_tokens!r}")
        if self._pending < self._quiet[0] and self._pending + new_tokens <= self._quiet[1]:
            self._pending += new_tokens
            return
        self._catch_up()
        if any(seq is None for seq in self._slots):
            raise ValueError(f"reserve() decodes every batch slot, and slots "
                             f"{[i for i, seq in enumerate(self._slots) if seq is None]} hold no sequence")
        self._take_pages(list(range(len(self._slots))), new_tokens)
        # Within these bounds a later call (pending tokens j before it, `new` in
        # it) finds every page it writes already held and gives none back.
        self._quiet = (min((seq.first_column + 1) * self.page_size + self.farthest - seq.length
                           for seq in self._slots),
                       min((seq.first_column + len(seq.pages)) * self.page_size - seq.length for seq in self._slots))

    def cancel_reservation(self, new_tokens: int) -> None:
        """Undoes the lengths of the last reserve(new_tokens), for a step that
        failed before it ran. Its pages stay taken: they hold positions the
        next reservation needs again."""
        self._catch_up()
        for seq in self._slots:
            seq.length -= new_tokens

    def attend_reserved(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        softmax_scale: Optional[float] = None) -> torch.Tensor:
        """The device half of a decode call that reserve() planned: k, v
        (max_batch, new, heads_kv, head_dim) written after each sequence's
        device length, found through the block table, the lengths advanced,
        and q (max_batch, new, heads, head_dim) attended. No host value, no
        sync: a CUDA graph can hold it. Its checks are shapes only; the kernel
        checks lengths and pages on the device. Called without the reservation
        for its tokens, it writes them into the sink page (the block table has
        -1 there) and the kernel refuses the call: no sequence changes."""
        scale = self._check_call(q, k, v, softmax_scale, len(self._slots), "batch slot")
        write_new_tokens(self.k, self.v, self.block_table, self.seqlens, k, v)
        lengths = self.seqlens + q.shape[1]
        out, _ = torch.ops.fibsparse.decode(q, self.k, self.v, lengths, self.offsets, band_argument(self.window),
                                            scale, False, self.block_table)
        self.seqlens.copy_(lengths)  # after the kernel: a call it refuses leaves the lengths
        return out

    def _check_call(self, q, k, v, softmax_scale, sequences: int, per: str) -> float:
        """The shapes, dtypes and devices of a decode call of `sequences`
        sequences (one per `per`) against this pool: its softmax scale."""
        scale = check_scale(default_scale(q, softmax_scale))
        check_op_inputs(q, self.k, self.v, self.offsets, band_argument(self.window), scale, "k_cache", "v_cache",
                        paged=True)
        if q.shape[0] != sequences:
            raise ValueError(f"q must hold one sequence per {per} ({sequences}), got {tuple(q.shape)}")
        check_new_tokens(k, v, q, self.k)
        return scale

    # ---- The host mirror ----

    def _catch_up(self) -> None:
        """Adds the tokens reserved without planning to every sequence's host length."""
        if self._pending:  # (every slot holds a sequence: reserve() asked it)
            for seq in self._slots:
                seq.length += self._pending
            self._pending = 0
        self._quiet = (0, 0)

    def _take_pages(self, slots: list, new: int) -> list:
        """Gives back the slots' pages no query reads any more and takes those
        their next `new` positions need; the block table updated, the host
        lengths advanced. Returns the lengths before. Planned first, so that a
        refused call changes nothing."""
        plan = []
        for slot in slots:
            seq = self._sequence(slot)
            dead = self._dead_columns(seq)
            end_column = -(-(seq.length + new) // self.page_size)
            kept = len(seq.pages) - dead
            first = seq.first_column + dead if kept else max(seq.first_column + dead, self._first_live_column(seq))
            plan.append((seq, dead, first, end_column - first - kept))
        freed = sum(dead for _, dead, _, _ in plan)
        self._check_pool(sum(taken for *_, taken in plan), freed, f"this call ({len(slots)} sequence(s), {new} new "
                                                                    f"token(s) each)")
        self._check_table_width(max((first + len(seq.pages) - dead + taken for seq, dead, first, taken in plan),
                                    default=0), "this call")

        updates = []  # (slot, column, page) entries of the block table
        for slot, (seq, dead, first, _) in zip(slots, plan):  # every sequence's dead pages back first,
            for column in range(seq.first_column, seq.first_column + dead):
                updates.append((slot, column, -1))
                self._free_pages.append(seq.pages.popleft())
            seq.first_column = first
        lengths = []
        for slot, (seq, _, _, taken) in zip(slots, plan):  # then pages taken (a page given back may be reused)
            for _ in range(taken):
                updates.append((slot, seq.first_column + len(seq.pages), self._free_pages[-1]))
                seq.pages.append(self._free_pages.pop())
            lengths.append(seq.length)
            seq.length += new
        self._apply(updates)
        return lengths


    def _sequence(self, slot: int) -> _Sequence:
        if isinstance(slot, bool) or not isinstance(slot, int) or not 0 <= slot < len(self._slots) \
                or self._slots[slot] is None:
            raise ValueError(f"slot {slot!r} holds no sequence; active slots: {self.active_slots}")
        return self._slots[slot]

    def _first_live_column(self, seq: _Sequence) -> int:
        """The first column a future query can read: every later query sits
        at a position >= seq.length and reads no further back than farthest."""
        return max(0, seq.length - self.farthest) // self.page_size

    def _dead_columns(self, seq: _Sequence) -> int:
        """How many of the sequence's oldest pages no future query reads."""
        return min(len(seq.pages), max(0, self._first_live_column(seq) - seq.first_column))

    def _pool_row(self, seq: _Sequence, position: int) -> int:
        """The row of the pool (viewed as (num_pages * page_size, ...)) holding a position."""
        page = seq.pages[position // self.page_size - seq.first_column]
        return page * self.page_size + position % self.page_size

    def _check_table_width(self, columns: int, what: str) -> None:
        """A fixed block table (fix_block_table) is never reallocated: refuse what needs wider."""
        if self._table_fixed and columns > self.block_table.shape[1]:
            raise ValueError(f"the block table was fixed at {self.block_table.shape[1]} columns (positions below "
                             f"{self.block_table.shape[1] * self.page_size}, fix_block_table) and {what} needs "
                             f"{columns}")

    def _check_pool(self, needed: int, freed: int, what: str) -> None:
        if needed > len(self._free_pages) + freed:
            raise ValueError(f"PagedKVCache out of pages: it has {self.num_pages} pages of {self.page_size} rows, "
                             f"{len(self._free_pages) + freed} free, and {what} needs {needed}; a pool of "
                             f"PagedKVCache.pages_needed(...) pages never runs out")

    def _apply(self, updates: list) -> None:
        """Writes (slot, column, page) entries into the block table, widening it
        (doubling) when a column lies past its end."""
        if not updates:
            return
        widest = max(column for _, column, _ in updates) + 1
        if widest > self.block_table.shape[1]:
            assert not self._table_fixed, "a fixed block table is checked before any change (_check_table_width)"
            self._widen_block_table(max(widest, 2 * self.block_table.shape[1]))
        index = _to_device([x for update in updates for x in update], self.k.device).view(-1, 3)
        self.block_table[index[:, 0], index[:, 1]] = index[:, 2].int()

    def _widen_block_table(self, columns: int) -> None:
        """A new block table of `columns` columns holding the current one, -1 beyond it."""
        wider = torch.full((self.block_table.shape[0], columns), -1, dtype=torch.int32, device=self.k.device)
        wider[:, :self.block_table.shape[1]] = self.block_table
        self.block_table = wider

    def _check_prompt(self, k, v, dims: int, layout: str) -> None:
        for name, t in (("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor) or t.dim() != dims or tuple(t.shape[-2:]) != tuple(self.k.shape[2:]):
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{name} must be {layout} with heads_kv, head_dim = {tuple(self.k.shape[2:])}, got "
                                 f"{got}")
            if t.dtype != self.k.dtype or t.device != self.k.device:
                raise ValueError(f"{name} must have the cache's dtype {self.k.dtype} and device {self.k.device}, got "
                                 f"{t.dtype} on {t.device}")
        if v.shape != k.shape:
            raise ValueError(f"v must have k's shape {tuple(k.shape)}, got {tuple(v.shape)}")

    def _admit(self, k: torch.Tensor, v: torch.Tensor, first_rows: list, lengths: list) -> list:
        """Sequences i = 0, 1, ... of lengths[i] tokens whose keys and values are
        rows first_rows[i] .. of k, v (rows, heads_kv, head_dim): each takes a
        free slot and pages for the positions decoding can still read."""
        self._catch_up()
        free_slots = [slot for slot, seq in enumerate(self._slots) if seq is None]
        if len(lengths) > len(free_slots):
            raise ValueError(f"PagedKVCache has {len(free_slots)} free batch slot(s) of max_batch="
                             f"{len(self._slots)}, {len(lengths)} sequence(s) asked to join")
        sequences = []
        for length in lengths:
            seq = _Sequence()
            seq.length = length
            seq.first_column = self._first_live_column(seq)
            sequences.append(seq)
        needed = sum(len(pages_spanned(seq.first_column * self.page_size, seq.length, self.page_size))
                     for seq in sequences)
        self._check_pool(needed, 0, f"a prompt of {len(lengths)} sequence(s) of lengths {lengths}")
        self._check_table_width(max((-(-seq.length // self.page_size) for seq in sequences), default=0),
                                f"a prompt of lengths {lengths}")

        slots, updates, sources, rows = free_slots[:len(lengths)], [], [], []
        for slot, seq, first_row in zip(slots, sequences, first_rows):
            for column in pages_spanned(seq.first_column * self.page_size, seq.length, self.page_size):
                updates.append((slot, column, self._free_pages[-1]))
                seq.pages.append(self._free_pages.pop())
            for position in range(max(0, seq.length - self.farthest), seq.length):
                sources.append(first_row + position)
                rows.append(self._pool_row(seq, position))
            self._slots[slot] = seq
        self._apply(updates)
        if rows:
            index = _to_device(sources + rows, self.k.device)
            sources, rows = index[:len(rows)], index[len(rows):]
            self.k.view(-1, *self.k.shape[2:]).index_copy_(0, rows, k.index_select(0, sources))
            self.v.view(-1, *self.v.shape[2:]).index_copy_(0, rows, v.index_select(0, sources))
        self.seqlens.index_copy_(0, _to_device(slots, self.k.device), _to_device(lengths, self.k.device))
        return slots
