"""Input checks for the Python paths (reference, decode). The compiled ops
check the same things in C++ (csrc/op_checks.cpp) for direct callers."""
from __future__ import annotations

import math

import torch

from . import _C
from ._offsets import check_band

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_name: str = "k", v_name: str = "v",
              paged: bool = False) -> None:
    """q (batch, seqlen_q, heads, head_dim); k, v (batch, seqlen_k, heads_kv, head_dim),
    or, `paged`, a pool of pages (num_pages, page_size, heads_kv, head_dim)."""
    for name, t in (("q", q), (k_name, k), (v_name, v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor (batch, seqlen, heads, head_dim), got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if q.dtype not in FLOAT_DTYPES:
        raise ValueError(f"q must be float16, bfloat16, float32 or float64, got {q.dtype}")
    for name, t in ((k_name, k), (v_name, v)):
        if t.dtype != q.dtype:
            raise ValueError(f"{name} must have q's dtype {q.dtype}, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on q's device {q.device}, got {t.device}")
    if v.shape != k.shape:
        raise ValueError(f"{v_name} must have the shape of {k_name} {tuple(k.shape)}, got {tuple(v.shape)}")
    batch, _, heads, head_dim = q.shape
    if paged and k.shape[3] != head_dim:
        raise ValueError(f"{k_name} must be (num_pages, page_size, heads_kv, head_dim) with q's head_dim "
                         f"({head_dim}), got {tuple(k.shape)}")
    if not paged and (k.shape[0] != batch or k.shape[3] != head_dim):
        raise ValueError(f"{k_name} must have q's batch ({batch}) and head_dim ({head_dim}), got {tuple(k.shape)}")
    if head_dim < 1:
        raise ValueError(f"q's head_dim must be >= 1, got {head_dim}")
    if k.shape[2] < 1 or heads % k.shape[2]:
        raise ValueError(f"q's heads ({heads}) must be a multiple of {k_name}'s heads_kv ({k.shape[2]})")


def check_scale(softmax_scale: float) -> float:
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)) or not math.isfinite(softmax_scale):
        raise ValueError(f"softmax_scale must be finite, got {softmax_scale}")
    return softmax_scale


# Limits of the compiled ops (csrc/op_checks.cpp checks the same).
MAX_BATCH = MAX_HEADS = MAX_OFFSETS_PER_HEAD = 65535
MAX_SEQLEN_K = 2**31 - 2**16
CUDA_HEAD_DIMS = tuple(_C.build_info()["cuda_head_dims"])  # the kernels' own list (csrc/capabilities.h)
MAX_CPU_HEAD_DIM = 1024


def _cuda_head_dims_text() -> str:  # "16, 32, 64 or 128"
    *rest, last = CUDA_HEAD_DIMS
    return f"{', '.join(map(str, rest))} or {last}" if rest else str(last)

OFFSET_DTYPES = (torch.int32, torch.int64, torch.float32, torch.float64)


def check_op_inputs(q, k, v, offsets, band: list, softmax_scale: float, k_name: str = "k",
                    v_name: str = "v", paged: bool = False) -> None:
    """Every check the compiled ops make on their arguments, in Python: the fake
    (meta) implementations apply it, so torch.compile users see the real op's
    error at trace time, and the decode path runs it before it writes a cache.
    `paged`: k and v are a pool of pages, whose first two dimensions
    check_block_table checks instead."""
    check_qkv(q, k, v, k_name, v_name, paged)
    batch, seqlen_q, heads, head_dim = q.shape
    seqlen_k = k.shape[1]
    if not paged and seqlen_q > seqlen_k:
        raise ValueError(f"q's seqlen_q ({seqlen_q}) must not exceed {k_name}'s seqlen_k ({seqlen_k}): "
                         f"queries are aligned to the last keys")
    if batch > MAX_BATCH or heads > MAX_HEADS:
        raise ValueError(f"q's batch and heads must each be at most {MAX_BATCH}, got batch {batch}, heads {heads}")
    if not paged and seqlen_k > MAX_SEQLEN_K:
        raise ValueError(f"{k_name}'s seqlen_k must be at most 2^31 - 2^16, got {seqlen_k}")
    if q.device.type == "cuda":
        if head_dim not in CUDA_HEAD_DIMS:
            raise ValueError(f"head_dim must be {_cuda_head_dims_text()} on CUDA, got {head_dim}")
    elif head_dim > MAX_CPU_HEAD_DIM:
        raise ValueError(f"head_dim must be in [1, {MAX_CPU_HEAD_DIM}], got {head_dim}")
    check_band(band)
    check_scale(softmax_scale)
    if not isinstance(offsets, torch.Tensor):
        raise ValueError(f"offsets must be a tensor, got {type(offsets).__name__}")
    if offsets.device != q.device:
        raise ValueError(f"offsets must be on q's device {q.device}, got {offsets.device}")
    if offsets.dtype not in OFFSET_DTYPES:
        raise ValueError(f"offsets must be int32/int64 (integer distances) or float32/float64 (fractional "
                         f"positions), got {offsets.dtype}")
    if offsets.dim() not in (1, 2) or (offsets.dim() == 2 and offsets.shape[0] != heads):
        raise ValueError(f"offsets must have shape (K,) or (heads={heads}, K), got {tuple(offsets.shape)}")
    if offsets.shape[-1] > MAX_OFFSETS_PER_HEAD:
        raise ValueError(f"offsets may hold at most {MAX_OFFSETS_PER_HEAD} entries per head, got {offsets.shape[-1]}")


def check_new_tokens(k, v, q: torch.Tensor, k_cache: torch.Tensor) -> None:
    """The new tokens a decode call appends: k, v (batch, new, heads_kv,
    head_dim) with the cache's dtype, on its device."""
    batch, new = q.shape[0], q.shape[1]
    expected = (batch, new, *k_cache.shape[2:])
    for name, t in (("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != expected:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be (batch, new, heads_kv, head_dim) = {expected}, got {got}")
        if t.dtype != k_cache.dtype or t.device != k_cache.device:
            raise ValueError(f"{name} must have the cache's dtype {k_cache.dtype} and device {k_cache.device}, got "
                             f"{t.dtype} on {t.device}")


def check_block_table(q, k_cache, block_table, ring: bool = False) -> None:
    """A paged decode call's block table, as the op checks it (csrc/op_checks.cpp's
    check_block_table): int32 (batch, pages_per_sequence) on q's device, a pool
    of at least one page of at least one row, no ring, a sequence capacity
    that holds the new queries and fits int32 positions. The values it reads
    are checked by the CPU op, the CUDA kernels and fibsparse_ext.paged."""
    if ring:
        raise ValueError("ring must be False with a block_table: a paged cache frees pages instead of wrapping around")
    batch, seqlen_q = q.shape[0], q.shape[1]
    if (not isinstance(block_table, torch.Tensor) or block_table.dtype != torch.int32 or block_table.dim() != 2
            or block_table.shape[0] != batch or block_table.shape[1] < 1):
        got = (f"{block_table.dtype} {tuple(block_table.shape)}" if isinstance(block_table, torch.Tensor)
               else type(block_table).__name__)
        raise ValueError(f"block_table must be an int32 tensor of shape (batch={batch}, pages_per_sequence >= 1), "
                         f"got {got}")
    if block_table.device != q.device:
        raise ValueError(f"block_table must be on q's device {q.device}, got {block_table.device}")
    num_pages, page_size = k_cache.shape[0], k_cache.shape[1]
    if num_pages < 1 or page_size < 1:
        raise ValueError(f"k_cache must hold at least one page of at least one row, got {tuple(k_cache.shape)} "
                         f"(num_pages, page_size, heads_kv, head_dim)")
    if num_pages > 2**31 - 1:
        raise ValueError(f"k_cache may hold at most 2^31 - 1 pages (block_table is int32), got {num_pages}")
    pages_per_sequence = block_table.shape[1]
    if pages_per_sequence > MAX_SEQLEN_K // page_size:
        raise ValueError(f"a sequence's capacity (block_table's pages_per_sequence {pages_per_sequence} x page_size "
                         f"{page_size}) must be at most 2^31 - 2^16 positions")
    if seqlen_q > pages_per_sequence * page_size:
        raise ValueError(f"q's seqlen_q ({seqlen_q}) must not exceed a sequence's capacity (block_table's "
                         f"pages_per_sequence {pages_per_sequence} x page_size {page_size})")


def check_cache_seqlens(cache_seqlens, batch: int) -> None:
    """cache_seqlens: an integer tensor of shape (batch,)."""
    if (not isinstance(cache_seqlens, torch.Tensor) or cache_seqlens.shape != (batch,)
            or cache_seqlens.is_floating_point() or cache_seqlens.is_complex() or cache_seqlens.dtype == torch.bool):
        described = (f"{cache_seqlens.dtype} {tuple(cache_seqlens.shape)}" if isinstance(cache_seqlens, torch.Tensor)
                     else f"{type(cache_seqlens).__name__} {cache_seqlens!r}")
        raise ValueError(f"cache_seqlens must be an integer tensor of shape ({batch},), got {described}")


def check_packed_op_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, offsets, band: list,
                           softmax_scale: float) -> None:
    """The packed (varlen) ops' checks of their arguments' shapes, dtypes and
    devices (csrc/op_checks.cpp's check_packed_inputs); the boundaries' values
    are check_packed_lengths'."""
    for name, t, layout in (("q", q, "(total_q, heads, head_dim)"), ("k", k, "(total_k, heads_kv, head_dim)"),
                            ("v", v, "(total_k, heads_kv, head_dim)")):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(f"{name} must have shape {layout}, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    for name, t in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int32 or t.dim() != 1 or t.shape[0] < 1:
            got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be an int32 tensor of shape (batch + 1,), got {got}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on q's device {q.device}, got {t.device}")
    if cu_seqlens_k.shape != cu_seqlens_q.shape:
        raise ValueError(f"cu_seqlens_k must have cu_seqlens_q's shape {tuple(cu_seqlens_q.shape)} (one entry per "
                         f"sequence, plus one), got {tuple(cu_seqlens_k.shape)}")
    if cu_seqlens_q.shape[0] - 1 > MAX_BATCH:
        raise ValueError(f"a packed batch may hold at most {MAX_BATCH} sequences, got {cu_seqlens_q.shape[0] - 1}")
    for name, value, total, total_name in (("max_seqlen_q", max_seqlen_q, q.shape[0], "total_q"),
                                           ("max_seqlen_k", max_seqlen_k, k.shape[0], "total_k")):
        if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)) or not 0 <= value <= total:
            raise ValueError(f"{name} must be an int in [0, {total_name}={total}], got {value!r}")
    check_op_inputs(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), offsets, band, softmax_scale)


def check_packed_lengths(cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, total_q: int, total_k: int,
                         max_seqlen_q: int, max_seqlen_k: int) -> None:
    """The values of cu_seqlens (csrc/op_checks.cpp's check_packed_lengths),
    read in one host copy: one device sync for CUDA tensors."""
    host = torch.cat([cu_seqlens_q, cu_seqlens_k]).cpu().tolist()
    batch = cu_seqlens_q.shape[0] - 1
    bounds = {"cu_seqlens_q": (host[:batch + 1], total_q), "cu_seqlens_k": (host[batch + 1:], total_k)}
    for name, (values, total) in bounds.items():
        if values[0] != 0:
            raise ValueError(f"{name} must start at 0, got {values[0]}")
        if values[-1] != total:
            raise ValueError(f"{name} must end at the tensor's rows ({total}), got {values[-1]}")
    q_bounds, k_bounds = bounds["cu_seqlens_q"][0], bounds["cu_seqlens_k"][0]
    for b in range(batch):
        seqlen_q, seqlen_k = q_bounds[b + 1] - q_bounds[b], k_bounds[b + 1] - k_bounds[b]
        if seqlen_q < 0 or seqlen_k < 0:
            raise ValueError(f"cu_seqlens_q and cu_seqlens_k must not decrease; sequence {b} has seqlen_q "
                             f"{seqlen_q}, seqlen_k {seqlen_k}")
        if seqlen_q > max_seqlen_q or seqlen_k > max_seqlen_k:
            raise ValueError(f"sequence {b} (seqlen_q {seqlen_q}, seqlen_k {seqlen_k}) is longer than max_seqlen_q "
                             f"{max_seqlen_q} / max_seqlen_k {max_seqlen_k}")
        if seqlen_q > seqlen_k:
            raise ValueError(f"sequence {b} has seqlen_q {seqlen_q} > seqlen_k {seqlen_k}: queries are a "
                             f"sequence's last positions")
