"""Input checks for the Python paths (reference, decode). The compiled ops
check the same things in C++ (csrc/fibsparse_api.cpp) for direct callers."""
from __future__ import annotations

import math

import torch

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
    if not math.isfinite(softmax_scale):
        raise ValueError(f"softmax_scale must be finite, got {softmax_scale}")
    return softmax_scale
