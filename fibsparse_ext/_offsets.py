"""Turning the user's `offsets` argument into the tensor every path reads.

Integer offsets are distances >= window; fractional offsets are real
positions >= 0 (learned alpha; they may lie inside the window, where they
simply read a band key a second time). Either is one row shared by all heads,
shape (K,), or one row per head, shape (heads, K). Rows of different length
are padded at the end with the sentinel -1 (PADDING), which is never attended.
"""
from __future__ import annotations

import math
import weakref
from typing import Sequence, Union

import torch

PADDING = -1

OffsetsLike = Union[torch.Tensor, Sequence[int], Sequence[float], Sequence[Sequence[int]], Sequence[Sequence[float]]]


def _is_compiling() -> bool:
    return hasattr(torch, "compiler") and torch.compiler.is_compiling()


def check_window(window) -> int:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1 (distance 0, the query itself, is always attended), "
                         f"got {window!r}")
    return window


def _check_row(row: list, window: int, fractional: bool, where: str) -> None:
    real = [x for x in row if x != PADDING]
    if any(x < 0 for x in real):
        raise ValueError(f"offsets{where} must be non-negative (pad with {PADDING} only), got {row}")
    if real != row[:len(real)]:
        raise ValueError(f"offsets{where}: padding ({PADDING}) may only come at the end of a row, got {row}")
    if fractional and not all(math.isfinite(x) for x in real):
        raise ValueError(f"offsets{where} must be finite, got {row}")
    if any(b <= a for a, b in zip(real, real[1:])):
        raise ValueError(f"offsets{where} must be strictly increasing, got {row}")
    if not fractional and real and real[0] < window:
        raise ValueError(f"offsets{where} must be >= window ({window}): distances below it are already in the "
                         f"dense band, got {row}")
    if not fractional and real and real[-1] > 2**31 - 1:
        raise ValueError(f"offsets{where} must fit in int32, got {row}")


def check_offset_values(offsets: torch.Tensor, window: int) -> None:
    """Checks the values of an offsets tensor (one host copy of K numbers per head)."""
    fractional = offsets.is_floating_point()
    host = offsets.detach().cpu()
    rows = host.tolist() if host.dim() == 2 else [host.tolist()]
    for h, row in enumerate(rows):
        _check_row(row, window, fractional, f"[{h}]" if offsets.dim() == 2 else "")


# Tensors whose values passed the check, by id, with the version counter they
# had then: checking a device tensor needs a host copy (a device sync), so a
# tensor reused unchanged from call to call is checked once. The weak
# reference tells a live tensor from a new one that reuses a dead one's id;
# any in-place change bumps the version and brings the check back.
_checked: dict[int, tuple[weakref.ref, int, int]] = {}


def _check_tensor_values_once(offsets: torch.Tensor, window: int) -> None:
    seen = _checked.get(id(offsets))
    if seen is not None and seen[0]() is offsets and seen[1] == offsets._version and seen[2] == window:
        return
    check_offset_values(offsets, window)
    if len(_checked) > 1024:  # dead entries of temporary tensors
        for key in [k for k, (ref, _, _) in _checked.items() if ref() is None]:
            del _checked[key]
    _checked[id(offsets)] = (weakref.ref(offsets), offsets._version, window)


def _check_shape(offsets: torch.Tensor, q: torch.Tensor) -> None:
    if offsets.dim() not in (1, 2):
        raise ValueError(f"offsets must have shape (K,) or (heads, K), got {tuple(offsets.shape)}")
    if offsets.dim() == 2 and q.dim() == 4 and offsets.shape[0] != q.shape[2]:
        raise ValueError(f"offsets per head must have shape (heads={q.shape[2]}, K), got {tuple(offsets.shape)}")


def as_offsets(offsets: OffsetsLike, q: torch.Tensor, window: int, check_values: bool = True) -> torch.Tensor:
    """The offsets as a tensor on q's device: int32 for integers, a float type
    for fractional positions (float64 lists for float64 q, else float32).

    A tensor argument keeps its device (a tensor on another device than q is
    an error, raised by the op) and its autograd history.
    """
    if not isinstance(offsets, torch.Tensor):
        if isinstance(offsets, (int, float)):
            raise ValueError(f"offsets must be a sequence or tensor of distances, got the scalar {offsets!r}")
        flat = [x for row in offsets for x in (row if isinstance(row, (list, tuple)) else [row])]
        if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in flat):
            raise ValueError(f"offsets must hold ints (distances) or floats (positions), got {offsets!r}")
        fractional = any(isinstance(x, float) for x in flat)
        try:  # checked on the host, then moved: no device sync for the checks
            host = torch.tensor(offsets, dtype=torch.float64 if fractional else torch.int64)
        except ValueError as e:  # ragged nested lists
            raise ValueError(f"offsets rows must have one length; pad short rows with {PADDING}: {e}") from None
        host = host.reshape(0) if host.numel() == 0 else host
        _check_shape(host, q)
        if check_values:
            check_offset_values(host, window)
        dtype = (torch.float64 if q.dtype == torch.float64 else torch.float32) if fractional else torch.int32
        return host.to(device=q.device, dtype=dtype)
    if offsets.is_complex() or offsets.dtype == torch.bool:
        raise ValueError(f"offsets must be an integer or floating tensor, got {offsets.dtype}")
    _check_shape(offsets, q)
    if check_values and not _is_compiling():
        _check_tensor_values_once(offsets, window)
    return offsets
