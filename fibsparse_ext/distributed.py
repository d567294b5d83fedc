"""Context parallelism: one sequence split over the ranks of a process group,
each rank holding a contiguous shard (rank order = position order), with
torch.distributed (NCCL on GPUs, gloo on CPUs) moving only the keys the pattern
reads.

A rank's queries at positions [c, c + L) read, before its shard, the band's
halo [c - window + 1, c) and, for each offset d, the strip [c - d, c + L - d)
(for a fractional position p, rows floor(p) and floor(p) + 1 behind). Each rank
works out from every shard's length which of its rows every later rank reads,
the ranks exchange exactly those rows with batched point-to-point sends, and
each rank runs the ordinary kernels on its own rows behind the received ones:
key rows from the first row read to its shard's end, those not read left zero.
The kernels then compute exactly the rows a single process would compute for
the whole sequence. Memory per rank is its shard plus the farthest distance
read, never the whole prefix.

The backward sends the gradients of received rows back to their owners, which
add them in rank order (deterministic). Replicated inputs (the offsets, and a
learned alpha behind them) get each rank's own shard's contribution: summed over
the ranks (as DDP or FSDP over a mesh that includes these ranks does) they are
the single-process gradient.

    torchrun --nproc-per-node 2 train.py   # each rank: its shard of q, k, v
    out = context_parallel_attn(q_shard, k_shard, v_shard, window=128, offsets=offsets)
"""
from __future__ import annotations

import functools
import hashlib
import math
import weakref
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.distributed as dist

from ._checked_once import can_remember
from ._offsets import OffsetsLike, as_offsets, check_window
from .functional import default_scale, fibsparse_attn


@dataclass(frozen=True)
class ExchangePlan:
    """Who sends which rows to whom, for every rank (the same on all of them).
    Rows are global positions; `reads[r]` are the sorted intervals rank r reads
    before its shard, `sends[(s, r)]` the intervals rank s sends rank r."""
    starts: tuple[int, ...]  # each shard's first position
    lengths: tuple[int, ...]
    reads: tuple[tuple[tuple[int, int], ...], ...]
    sends: dict

    def first_read(self, rank: int) -> int:
        """The first position rank `rank` reads (its shard start if none before it)."""
        return self.reads[rank][0][0] if self.reads[rank] else self.starts[rank]


def _merge(intervals: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    merged: list[list[int]] = []
    for lo, hi in sorted(i for i in intervals if i[1] > i[0]):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return tuple((lo, hi) for lo, hi in merged)


def reach_behind(window: int, offsets: torch.Tensor) -> list[tuple[int, int]]:
    """(farthest, nearest) per distance of the pattern: a query at pos reads rows
    pos - farthest .. pos - nearest through it (the band; an integer offset d
    reads row pos - d; a fractional position p rows pos - floor(p) - 1 and
    pos - floor(p)). From the offsets' host values, every head's."""
    values = [x for x in offsets.detach().cpu().flatten().tolist() if x >= 0]  # -1 is padding
    fractional = offsets.is_floating_point()
    behind = [(window - 1, 0)]
    for x in values:
        whole = math.floor(x)
        behind.append((whole + 1, whole) if fractional else (whole, whole))
    return behind


def rows_read_before(start: int, length: int, behind: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """The positions before `start` that queries [start, start + length) read,
    as sorted disjoint intervals (behind: reach_behind's)."""
    wanted = []
    for farthest, nearest in behind:
        lo, hi = max(start - farthest, 0), min(start + length - nearest, start)
        if length and lo < hi:
            wanted.append((lo, hi))
    return _merge(wanted)


def exchange_plan(lengths: Sequence[int], window: int, offsets: torch.Tensor) -> ExchangePlan:
    """The rows each rank reads from earlier shards, from every shard's length,
    the window and the offsets (host values, every head's)."""
    behind = reach_behind(window, offsets)
    starts = [sum(lengths[:r]) for r in range(len(lengths))]
    reads, sends = [], {}
    for r, (start, length) in enumerate(zip(starts, lengths)):
        reads.append(rows_read_before(start, length, behind))
        for s in range(r):
            owned = (starts[s], starts[s] + lengths[s])
            part = tuple((max(lo, owned[0]), min(hi, owned[1])) for lo, hi in reads[r]
                         if max(lo, owned[0]) < min(hi, owned[1]))
            if part:
                sends[(s, r)] = part
    return ExchangePlan(tuple(starts), tuple(lengths), tuple(reads), sends)


@functools.lru_cache(maxsize=256)
def _rows(intervals: tuple, base: int, device: torch.device) -> torch.Tensor:
    """Row indices, relative to `base`, of the positions in `intervals` (kept:
    every layer and step of a run asks for the same few)."""
    if not intervals:
        return torch.empty(0, dtype=torch.long, device=device)
    return torch.cat([torch.arange(lo - base, hi - base, device=device) for lo, hi in intervals])


@functools.lru_cache(maxsize=64)
def _plan(lengths: tuple, window: int, offset_values: tuple, fractional: bool) -> ExchangePlan:
    """exchange_plan, kept for the lengths and pattern a run repeats."""
    dtype = torch.float64 if fractional else torch.int64
    return exchange_plan(lengths, window, torch.tensor(offset_values, dtype=dtype))


# Host copies of device offsets, once per tensor version (a copy waits for
# the GPU): id -> (weak reference, version and data pointer, host copy).
_host_offsets: dict = {}


def _on_host(offsets: torch.Tensor) -> torch.Tensor:
    if not can_remember([offsets]):
        return offsets.detach().cpu()
    state = (offsets._version, offsets.data_ptr())
    known = _host_offsets.get(id(offsets))
    if known is None or known[0]() is not offsets or known[1] != state:
        if len(_host_offsets) > 256:  # entries of dead tensors
            for dead in [key for key, entry in _host_offsets.items() if entry[0]() is None]:
                del _host_offsets[dead]
        known = (weakref.ref(offsets), state, offsets.detach().to("cpu", copy=True))
        _host_offsets[id(offsets)] = known
    return known[2]


def _count(intervals) -> int:
    return sum(hi - lo for lo, hi in intervals)


class _GatherKeys(torch.autograd.Function):
    """Forward: this rank's key buffer, k and v rows from the first position it
    reads to its shard's end: the rows it reads from earlier ranks (received),
    zeros between them, then its own shard. Backward: the gradients of the
    received rows go back to their owners, which add them in rank order.

    Only rows that some rank reads are sent (gathered into one k-and-v message
    per pair of ranks); the copy of the shard into the buffer is queued while
    the messages are in flight. Whole-shard temporaries are what this avoids:
    at a million tokens a concatenation of k and v cost more than the messages."""

    @staticmethod
    def forward(ctx, k, v, plan: ExchangePlan, rank: int, group):
        ctx.plan, ctx.rank, ctx.group = plan, rank, group
        start = plan.starts[rank]
        gap = start - plan.first_read(rank)
        ctx.gap = gap
        batch, _, heads_kv, head_dim = k.shape
        ops, received = [], []
        for (s, r), intervals in sorted(plan.sends.items()):
            if s == rank:
                rows = _rows(intervals, start, k.device)
                message = torch.cat([k.index_select(1, rows), v.index_select(1, rows)], -1)
                ops.append(dist.P2POp(dist.isend, message, _peer(group, r), group))
            elif r == rank:
                buffer = k.new_empty(batch, _count(intervals), heads_kv, 2 * head_dim)
                ops.append(dist.P2POp(dist.irecv, buffer, _peer(group, s), group))
                received.append(buffer)
        works = dist.batch_isend_irecv(ops) if ops else []
        if gap == 0:  # reads nothing before its shard (the first rank): the shard is the buffer
            for work in works:
                work.wait()
            return k.view_as(k), v.view_as(v)
        k_all = k.new_empty(batch, gap + k.shape[1], heads_kv, head_dim)
        v_all = v.new_empty(batch, gap + v.shape[1], heads_kv, head_dim)
        k_all[:, gap:].copy_(k)
        v_all[:, gap:].copy_(v)
        k_all[:, :gap].zero_()
        v_all[:, :gap].zero_()
        for work in works:
            work.wait()
        if received:
            kv_read = torch.cat(received, 1)
            rows = _rows(plan.reads[rank], start - gap, k.device)
            k_all.index_copy_(1, rows, kv_read[..., :head_dim])
            v_all.index_copy_(1, rows, kv_read[..., head_dim:])
        return k_all, v_all

    @staticmethod
    def backward(ctx, grad_k_all, grad_v_all):
        plan, rank, group, gap = ctx.plan, ctx.rank, ctx.group, ctx.gap
        start = plan.starts[rank]
        batch, _, heads_kv, head_dim = grad_k_all.shape
        ops, incoming = [], []
        for (s, r), intervals in sorted(plan.sends.items()):
            if r == rank:  # the gradients of rows received from s go back to s
                rows = _rows(intervals, start - gap, grad_k_all.device)
                message = torch.cat([grad_k_all.index_select(1, rows), grad_v_all.index_select(1, rows)], -1)
                ops.append(dist.P2POp(dist.isend, message, _peer(group, s), group))
            elif s == rank:
                buffer = grad_k_all.new_empty(batch, _count(intervals), heads_kv, 2 * head_dim)
                ops.append(dist.P2POp(dist.irecv, buffer, _peer(group, r), group))
                incoming.append((r, intervals, buffer))
        _run(ops)
        # The shard's rows of the buffer's gradient are the shard's gradient;
        # the later ranks' parts are added in place (grad_k_all is the kernel's
        # fresh dk of the buffer, which nothing else reads), in rank order.
        grad_k, grad_v = grad_k_all[:, gap:], grad_v_all[:, gap:]
        for _, intervals, buffer in sorted(incoming, key=lambda item: item[0]):
            rows = _rows(intervals, start, grad_k.device)
            grad_k.index_add_(1, rows, buffer[..., :head_dim])
            grad_v.index_add_(1, rows, buffer[..., head_dim:])
        return grad_k, grad_v, None, None, None


def _peer(group, rank: int) -> int:
    """The global rank of `rank` in `group` (P2POp takes global ranks)."""
    return rank if group is None else dist.get_global_rank(group, rank)


def _run(ops) -> None:
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()


def context_parallel_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, offsets: OffsetsLike,
                          group: Optional[dist.ProcessGroup] = None, softmax_scale: Optional[float] = None,
                          return_lse: bool = False):
    """fibsparse_attn over a sequence sharded along the ranks of `group`.

    Args:
        q: this rank's shard (batch, seqlen_r, heads, head_dim); k, v: (batch,
            seqlen_r, heads_kv, head_dim). Rank r holds the positions after rank
            r - 1's; every shard has the same length but the last, which may be
            shorter.
        window, offsets, softmax_scale: as fibsparse_attn, the same on every rank.
        return_lse: also return lse (batch, heads, seqlen_r).

    Returns:
        this rank's rows of the output (and lse) of fibsparse_attn over the whole
        sequence. Every rank must call it, and run the backward, together. The
        ranks first agree on their shapes, dtypes, window and offsets with one
        small all_gather; a disagreement is an error on every rank (not a hang).
        A group of one is fibsparse_attn.
    """
    check_window(window)
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("context_parallel_attn needs an initialized torch.distributed process group "
                         "(dist.init_process_group, e.g. under torchrun)")
    if q.dim() != 4 or k.dim() != 4 or q.shape[1] != k.shape[1]:
        raise ValueError(f"q and k must be this rank's shards, (batch, seqlen_r, heads, head_dim) with one seqlen_r, "
                         f"got q {tuple(q.shape)}, k {tuple(k.shape)}")
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    offsets = as_offsets(offsets, q, window)
    lengths, host_offsets = _agree(q, k, window, offsets, group, world)
    plan = _plan(tuple(lengths), window, tuple(host_offsets.flatten().tolist()), host_offsets.is_floating_point())
    k_all, v_all = _GatherKeys.apply(k, v, plan, rank, group)
    return fibsparse_attn(q, k_all, v_all, window, offsets, softmax_scale=default_scale(q, softmax_scale),
                          return_lse=return_lse)


# What every rank must agree on, one number each in the all_gather of _agree
# (the offsets' values as _DIGEST_WORDS numbers, compared together).
_AGREED = ("batch", "heads", "heads_kv", "head_dim", "dtype", "window", "offsets shape", "offsets dtype",
           "offsets values")
_DTYPE_CODES = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2, torch.float64: 3}
_DIGEST_WORDS = 4  # 32 bits each: exact in the float64 the header travels in


def _offsets_digest(host_offsets: torch.Tensor) -> list[float]:
    """A digest of the offsets' values, in order: ranks whose offsets differ in
    any value get different digests (a few sums of the values would let two
    patterns collide, and ranks that go on with different patterns build
    different exchanges and wait on each other)."""
    data = (host_offsets.to(torch.float64) + 0.0).contiguous().numpy().tobytes()  # + 0.0: -0.0 is 0.0
    digest = hashlib.sha256(data).digest()
    return [float(int.from_bytes(digest[4 * i:4 * i + 4], "little")) for i in range(_DIGEST_WORDS)]


_DTYPE_NAMES = {code: str(dtype).removeprefix("torch.") for dtype, code in _DTYPE_CODES.items()} | {-1: "integer"}


def _shown(name: str, agreed):
    """One rank's entry of _agree's header as its error message shows it."""
    if name == "offsets values":
        return f"{int(agreed[0]):08x}"  # the digest's first word
    if name in ("dtype", "offsets dtype"):
        return _DTYPE_NAMES.get(int(agreed), "unsupported")
    return int(agreed)


def _agree(q: torch.Tensor, k: torch.Tensor, window: int, offsets: torch.Tensor, group,
           world: int) -> tuple[list[int], torch.Tensor]:
    """Every rank's shard length and a host copy of the offsets, after checking
    with one all_gather that all ranks hold the same kind of shard and the same
    pattern; a disagreement raises the same error on every rank, before any
    rank waits on another."""
    host_offsets = _on_host(offsets)
    # Integer and fractional offsets of equal values are different patterns (a
    # fractional one may read two rows); float32 and float64 ones differ in rounding.
    offsets_dtype = -1 if not offsets.is_floating_point() else _DTYPE_CODES.get(offsets.dtype, -2)
    mine = [q.shape[1], q.shape[0], q.shape[2], k.shape[2], q.shape[3], _DTYPE_CODES.get(q.dtype, -1), window,
            float(offsets.numel() * 4 + offsets.dim()), offsets_dtype, *_offsets_digest(host_offsets)]
    local = torch.tensor(mine, dtype=torch.float64, device=q.device)
    everyone = [torch.empty_like(local) for _ in range(world)]
    try:
        dist.all_gather(everyone, local, group=group)
    except RuntimeError as error:  # gloo raises on the group's timeout (NCCL's watchdog ends the process)
        raise RuntimeError(f"context_parallel_attn: not every rank of the group called it within the process "
                           f"group's timeout (every rank must call it, and run the backward, together): "
                           f"{error}") from error
    rows = [t.tolist() for t in everyone]
    for i, name in enumerate(_AGREED, start=1):
        seen = [row[i:] if name == "offsets values" else row[i] for row in rows]
        if any(x != seen[0] for x in seen):
            shown = [_shown(name, x) for x in seen]
            raise ValueError(f"context_parallel_attn: the ranks disagree on {name} "
                             f"(rank by rank{', a digest' if name == 'offsets values' else ''}: {shown}); "
                             f"every rank must pass shards of one sequence and the same window and offsets")
    lengths = [int(row[0]) for row in rows]
    if any(length != lengths[0] for length in lengths[:-1]) or lengths[-1] > lengths[0]:
        raise ValueError(f"context_parallel_attn: shards must all have one length, the last one at most as long, "
                         f"got seqlen_r rank by rank {lengths}")
    return lengths, host_offsets
