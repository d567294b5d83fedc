"""The public attention function."""
from __future__ import annotations

import math
from typing import Optional

import torch

from . import _ops  # noqa: F401  (registers the ops, their fakes and autograd)
from ._offsets import OffsetsLike, as_offsets, band_argument, check_window


def default_scale(q: torch.Tensor, softmax_scale: Optional[float]) -> float:
    if softmax_scale is not None:
        if not isinstance(softmax_scale, (str, bytes, bool)):  # float() would take "0.5" and True
            try:
                return float(softmax_scale)
            except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of several elements
                pass
        raise ValueError(f"softmax_scale must be a finite number, got {softmax_scale!r}")
    if q.dim() < 1 or q.shape[-1] < 1:
        raise ValueError(f"q must have a head_dim >= 1 as its last dimension, got shape {tuple(q.shape)}")
    return 1.0 / math.sqrt(q.shape[-1])


def fibsparse_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, offsets: OffsetsLike,
                   softmax_scale: Optional[float] = None, return_lse: bool = False):
    """Causal window-plus-offsets attention.

    Query i attends to keys i - d for d in {0, ..., window-1} and for d in
    `offsets` (when i - d >= 0); docs/semantics.md states the conventions.

    Args:
        q: (batch, seqlen_q, heads, head_dim).
        k, v: (batch, seqlen_k, heads_kv, head_dim), heads % heads_kv == 0 (GQA/MQA);
            seqlen_q <= seqlen_k, the last query aligned with the last key.
        window: size of the dense causal band, >= 1.
        offsets: extra distances, one row (K,) for all heads or one per head (heads, K),
            rows padded at the end with -1. Integers (int list / int32 or int64 tensor): distances
            >= window. Floats (float list / float32 or float64 tensor): fractional positions >= 0,
            read by linear interpolation; a float tensor that requires grad receives
            d loss / d position.
        softmax_scale: defaults to 1 / sqrt(head_dim).
        return_lse: also return the log-sum-exp, (batch, heads, seqlen_q), float32
            (float64 for float64 inputs).

    Returns:
        out with q's shape and dtype, or (out, lse).
    """
    check_window(window)
    offsets = as_offsets(offsets, q, window)
    out, lse = torch.ops.fibsparse.fwd(q, k, v, offsets, band_argument(window), default_scale(q, softmax_scale))
    return (out, lse) if return_lse else out


def _attend_built_offsets(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, offsets: torch.Tensor,
                          softmax_scale: Optional[float] = None) -> torch.Tensor:
    """fibsparse_attn for offsets its caller built valid (a schedule's, or a
    learned alpha times increasing b_k), e.g. every forward of a model: their
    values are not read on the host (a device sync on CUDA); the kernels still
    check them on the device at every launch."""
    out, _ = torch.ops.fibsparse.fwd(q, k, v, offsets, band_argument(window), default_scale(q, softmax_scale))
    return out
