"""How a batch as transformers hands it to an attention function (a 2-D padding
mask, position_ids) becomes packed sequences for fibsparse_attn_varlen.

A row whose real tokens are one run (left padding, right padding, or both) is
one sequence of those tokens: positions count from its first real token, as
transformers' own position_ids do under left padding. A row whose position_ids
go down (documents packed into one row, as DataCollatorWithFlattening makes
them) is one sequence per run of increasing positions. Anything else (holes in
a mask) cannot be one causal sequence and is refused.

Finding the sequences reads the mask or position_ids on the host (a device
sync). Every layer of a forward passes the same tensors, so the result is
kept for as long as they are unchanged: one sync per forward, not per layer
(per layer for tensors made under torch.inference_mode, whose changes cannot
be seen).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Optional

import torch

from .._checked_once import can_remember
from ..varlen import _attend_packed_built_offsets


@dataclass
class Packing:
    """The sequences of a (batch, seqlen_q) query block over (batch, seqlen_k)
    keys: which flattened rows each holds, and their boundaries."""
    rows_q: Optional[torch.Tensor]  # rows of the (batch * seqlen_q) queries kept, in order; None: all
    rows_k: Optional[torch.Tensor]
    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int


def _boundaries(lengths: torch.Tensor) -> torch.Tensor:
    return torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).to(torch.int32)


def _from_padding(valid: torch.Tensor, seqlen_q: int) -> Packing:
    batch, seqlen_k = valid.shape
    counts = valid.sum(1)
    first = valid.int().argmax(1)
    columns = torch.arange(seqlen_k, device=valid.device)
    one_run = (columns >= first[:, None]) & (columns < (first + counts)[:, None])
    if not torch.equal(one_run, valid):
        raise ValueError("fibsparse attention takes padding masks whose real tokens are one run per row (left or "
                         "right padding); this mask has padding between real tokens")
    rows_k, cu_k = valid.flatten().nonzero().squeeze(1), _boundaries(counts)
    if seqlen_q == seqlen_k:  # queries and keys are the same tokens: one boundaries tensor for both
        return Packing(rows_k, rows_k, cu_k, cu_k, int(counts.max()), int(counts.max()))
    valid_q = valid[:, seqlen_k - seqlen_q:]
    counts_q = valid_q.sum(1)
    return Packing(valid_q.flatten().nonzero().squeeze(1), rows_k, _boundaries(counts_q), cu_k, int(counts_q.max()),
                   int(counts.max()))


def _from_position_ids(position_ids: torch.Tensor, batch: int) -> Optional[Packing]:
    positions = position_ids.expand(batch, -1)
    seqlen = positions.shape[1]
    starts = torch.ones_like(positions, dtype=torch.bool)
    starts[:, 1:] = positions[:, 1:] <= positions[:, :-1]
    if bool(starts[:, 1:].any()) is False:
        return None  # one sequence per row: the dense path
    start_rows = starts.flatten().nonzero().squeeze(1)
    cu = torch.cat([start_rows, start_rows.new_tensor([batch * seqlen])]).to(torch.int32)
    longest = int(cu.diff().max())
    return Packing(None, None, cu, cu, longest, longest)


# The last packing found: every layer of a forward passes the same mask and
# position_ids (weak references, versions and shapes say they are the same).
_last: dict[str, tuple] = {}


def packing_of(attention_mask: Optional[torch.Tensor], position_ids: Optional[torch.Tensor], batch: int,
               seqlen_q: int, seqlen_k: int) -> Optional[Packing]:
    """The packed sequences of this call, or None where the dense call is exact
    (no padding before a real token, one sequence per row)."""
    remember = can_remember((attention_mask, position_ids))  # else found again in every layer
    if remember:
        key = tuple((weakref.ref(t), t._version) if t is not None else None
                    for t in (attention_mask, position_ids)) + (batch, seqlen_q, seqlen_k)
        seen = _last.get("packing")
        if seen is not None and _same(seen[0], key):
            return seen[1]
    packing = None
    if attention_mask is not None:
        if attention_mask.dim() != 2:
            raise ValueError(f"fibsparse attention takes a 2-D padding mask, got a {attention_mask.dim()}-D mask "
                             f"{tuple(attention_mask.shape)}: custom masks are not part of the pattern")
        valid = attention_mask.bool()
        right_padded = not bool((valid[:, 1:] > valid[:, :-1]).any())
        if not right_padded:  # right padding needs no packing: no real token reads the padding after it
            packing = _from_padding(valid[:, -seqlen_k:], seqlen_q)
    if packing is None and position_ids is not None and seqlen_q > 1:
        packing = _from_position_ids(position_ids, batch)
        if packing is not None and seqlen_q != seqlen_k:
            raise ValueError(f"position_ids restart within a row (packed sequences) while {seqlen_k - seqlen_q} "
                             f"cached keys precede the queries: packed sequences are taken whole, without a cache")
    if remember:
        _last["packing"] = (key, packing)
    return packing


def _same(seen_key: tuple, key: tuple) -> bool:
    for a, b in zip(seen_key[:2], key[:2]):
        if (a is None) != (b is None) or (a is not None and (a[0]() is None or a[0]() is not b[0]() or a[1] != b[1])):
            return False
    return seen_key[2:] == key[2:]


def packed_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, packing: Packing, window: int,
                     offsets: torch.Tensor, softmax_scale) -> torch.Tensor:
    """query (batch, seqlen_q, heads, head_dim), key and value (batch, seqlen_k,
    heads_kv, head_dim) through the packed kernels; padded query rows get 0.
    `offsets` are a layer's, built valid from its schedule."""
    batch, seqlen_q, heads, head_dim = query.shape
    q = query.reshape(batch * seqlen_q, heads, head_dim)
    k = key.reshape(-1, key.shape[2], head_dim)
    v = value.reshape(-1, value.shape[2], head_dim)
    if packing.rows_k is not None:
        q, k, v = q[packing.rows_q], k[packing.rows_k], v[packing.rows_k]
    out = _attend_packed_built_offsets(q, k, v, packing.cu_seqlens_q, packing.cu_seqlens_k, packing.max_seqlen_q,
                                       packing.max_seqlen_k, window, offsets, softmax_scale)
    if packing.rows_q is not None:
        out = out.new_zeros(batch * seqlen_q, heads, head_dim).index_copy(0, packing.rows_q, out)
    return out.view(batch, seqlen_q, heads, head_dim)
