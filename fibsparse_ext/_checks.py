"""Input checks for the Python paths (reference, decode). The compiled ops
check the same things in C++ (csrc/op_checks.cpp) for direct callers."""
from __future__ import annotations

import math

import torch

from . import _C
from ._offsets import check_band

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_name: str = "k", v_name: str = "v") -> None:
    """q (batch, seqlen_q, heads, head_dim); k, v (batch, seqlen_k, heads_kv, head_dim)."""
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
    if k.shape[0] != batch or k.shape[3] != head_dim:
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
                    v_name: str = "v") -> None:
    """Every check the compiled ops make on their arguments, in Python: the fake
    (meta) implementations apply it, so torch.compile users see the real op's
    error at trace time, and the decode path runs it before it writes a cache."""
    check_qkv(q, k, v, k_name, v_name)
    batch, seqlen_q, heads, head_dim = q.shape
    seqlen_k = k.shape[1]
    if seqlen_q > seqlen_k:
        raise ValueError(f"q's seqlen_q ({seqlen_q}) must not exceed {k_name}'s seqlen_k ({seqlen_k}): "
                         f"queries are aligned to the last keys")
    if batch > MAX_BATCH or heads > MAX_HEADS:
        raise ValueError(f"q's batch and heads must each be at most {MAX_BATCH}, got batch {batch}, heads {heads}")
    if seqlen_k > MAX_SEQLEN_K:
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
