"""Packed variable-length batches: `fibsparse_attn_varlen`, in FlashAttention's
varlen convention (flash_attn_varlen_func): documents of different lengths
back to back in one buffer, with cumulative sequence lengths."""
from __future__ import annotations

from typing import Optional

import torch

from . import _ops  # noqa: F401  (registers the ops, their fakes and autograd)
from ._checked_once import CheckedOnce
from ._checks import check_packed_lengths
from ._offsets import OffsetsLike, _is_compiling, as_offsets, band_argument, check_window
from .functional import default_scale


_lengths_checked = CheckedOnce()


def check_packed_boundaries(cu_seqlens_q, cu_seqlens_k, total_q: int, total_k: int, max_seqlen_q: int,
                            max_seqlen_k: int) -> None:
    """The boundaries' values: CPU ones on every call, CUDA ones once per
    tensor version (reading them costs a device sync); nothing under
    torch.compile, where the ops check them. Shapes and dtypes are the op's."""
    if _is_compiling() or not all(isinstance(t, torch.Tensor) and t.dtype == torch.int32 and t.dim() == 1
                                  for t in (cu_seqlens_q, cu_seqlens_k)):
        return
    if cu_seqlens_q.shape != cu_seqlens_k.shape:
        return  # the op names the mismatch
    settings = (total_q, total_k, max_seqlen_q, max_seqlen_k)
    check = lambda: check_packed_lengths(cu_seqlens_q, cu_seqlens_k, *settings)  # noqa: E731
    if cu_seqlens_q.device.type == "cpu":
        check()
    else:
        _lengths_checked.run((cu_seqlens_q, cu_seqlens_k), settings, check)


def fibsparse_attn_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                          cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, window: int,
                          offsets: OffsetsLike, softmax_scale: Optional[float] = None, return_lse: bool = False):
    """Causal window-plus-offsets attention over a packed batch of sequences.

    Sequence b holds rows cu_seqlens_q[b] .. cu_seqlens_q[b + 1] - 1 of q and
    rows cu_seqlens_k[b] .. cu_seqlens_k[b + 1] - 1 of k and v. Positions
    restart at 0 in every sequence, its queries are its last seqlen_q
    positions, and no query reads a key of another sequence: each sequence
    gets exactly what `fibsparse_attn` gives it alone.

    Args:
        q: (total_q, heads, head_dim).
        k, v: (total_k, heads_kv, head_dim), heads % heads_kv == 0.
        cu_seqlens_q, cu_seqlens_k: int32 (batch + 1,) on q's device: 0, then the
            running totals of the sequences' lengths (empty sequences allowed).
            With as many queries as keys in all (then both hold the same
            values) the CUDA backward can take its faster route (stored dS,
            windows up to 129).
        max_seqlen_q, max_seqlen_k: at least the longest sequence's lengths (they
            size the kernels' grids).
        window, offsets, softmax_scale: as `fibsparse_attn`.
        return_lse: also return the log-sum-exp, (heads, total_q).

    The boundaries' values are checked on the host: CPU ones on every call,
    CUDA ones once per tensor version (reading them costs a device sync; the
    layers of a model share one cu_seqlens, so a step syncs once). Under
    torch.compile, and for writes behind torch's version counter, the CPU op
    and the CUDA kernels check them instead (a CUDA error is a device-side
    assert).

    Returns:
        out with q's shape and dtype, or (out, lse).
    """
    check_window(window)
    # as_offsets reads the number of heads from a 4-D q.
    batched_q = q.unsqueeze(0) if isinstance(q, torch.Tensor) and q.dim() == 3 else q
    offsets = as_offsets(offsets, batched_q, window)
    if isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and q.dim() == 3 and k.dim() == 3:
        check_packed_boundaries(cu_seqlens_q, cu_seqlens_k, q.shape[0], k.shape[0], max_seqlen_q, max_seqlen_k)
    out, lse = torch.ops.fibsparse.varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                              offsets, band_argument(window), default_scale(q, softmax_scale))
    return (out, lse) if return_lse else out


def _attend_packed_built_offsets(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int, max_seqlen_k: int,
                                 window: int, offsets: torch.Tensor, softmax_scale: Optional[float] = None):
    """fibsparse_attn_varlen for offsets its caller built valid (see
    functional._attend_built_offsets); the boundaries are checked as there."""
    check_packed_boundaries(cu_seqlens_q, cu_seqlens_k, q.shape[0], k.shape[0], max_seqlen_q, max_seqlen_k)
    out, _ = torch.ops.fibsparse.varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                            offsets, band_argument(window), default_scale(q, softmax_scale))
    return out
