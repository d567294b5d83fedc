"""Turning the user's `offsets` argument into the tensor every path reads.

Integer offsets are distances >= window; fractional offsets are real
positions >= 0 (learned alpha; they may lie inside the window, where they
simply read a band key a second time). Either is one row shared by all heads,
shape (K,), or one row per head, shape (heads, K). Rows of different length
are padded at the end with the sentinel -1 (PADDING), which is never attended.
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import torch

from ._checked_once import CheckedOnce

PADDING = -1

OffsetsLike = Union[torch.Tensor, Sequence[int], Sequence[float], Sequence[Sequence[int]], Sequence[Sequence[float]]]


# The band as the Python side states it (csrc/pattern.h states it for the
# kernels, reference.py computes it): distances 0 .. window - 1 are read
# densely; an integer offset must lie past them.
def farthest_band_distance(window: int) -> int:
    return window - 1


def is_past_band(distance: float, window: int) -> bool:
    return distance >= window


def band_argument(window: int) -> list[int]:
    """The ops' `band` argument: the band's parameters, as csrc/pattern.h reads them."""
    return [window]


def _is_compiling() -> bool:
    return hasattr(torch, "compiler") and torch.compiler.is_compiling()


# The largest window the ops take (they hold it as int64 and halve the range
# for headroom); any window >= seqlen_k already means the whole causal band.
MAX_WINDOW = 2**62 - 1  # csrc/op_checks.cpp: INT64_MAX / 2
# Integer offsets are read as int32 distances.
MAX_OFFSET = 2**31 - 1


def check_window(window) -> int:
    # A SymInt is an int that torch.compile traces symbolically.
    if isinstance(window, bool) or not isinstance(window, (int, torch.SymInt)) or not 1 <= window <= MAX_WINDOW:
        raise ValueError(f"window must be an int in [1, 2^62 - 1] (distance 0, the query itself, is always attended; "
                         f"any window >= seqlen_k is the whole causal band), got {window!r}")
    return window


def check_band(band) -> None:
    """The ops' `band` argument (band_argument's list), checked as csrc/op_checks.cpp does."""
    if not isinstance(band, (list, tuple)) or len(band) != 1:
        raise ValueError(f"band must be [window], got {band!r}")
    check_window(band[0])


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
    if not fractional and real and not is_past_band(real[0], window):
        raise ValueError(f"offsets{where} must be >= window ({window}): distances below it are already in the "
                         f"dense band, got {row}")
    if not fractional and real and max(real) > MAX_OFFSET:
        raise ValueError(f"offsets{where} must be distances <= 2^31 - 1 (they are read as int32), got {row}")


def check_offset_values(offsets: torch.Tensor, window: int) -> None:
    """Checks the values of an offsets tensor (one host copy of K numbers per head)."""
    fractional = offsets.is_floating_point()
    host = offsets.detach().cpu()
    rows = host.tolist() if host.dim() == 2 else [host.tolist()]
    for h, row in enumerate(rows):
        _check_row(row, window, fractional, f"[{h}]" if offsets.dim() == 2 else "")


# Device offsets are checked once per tensor version (a host copy costs a
# sync); CPU offsets on every call, here and in the op, which costs none.
_offsets_checked = CheckedOnce()


def _check_tensor_values_once(offsets: torch.Tensor, window: int) -> None:
    if offsets.device.type == "cpu":
        check_offset_values(offsets, window)
        return
    _offsets_checked.run((offsets,), (window,), lambda: check_offset_values(offsets, window))


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
        if not isinstance(offsets, (list, tuple)):
            raise ValueError(f"offsets must be a sequence (list or tuple) or tensor of distances ([] for none), "
                             f"got {type(offsets).__name__} {offsets!r}")
        flat = [x for row in offsets for x in (row if isinstance(row, (list, tuple)) else [row])]
        if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in flat):
            raise ValueError(f"offsets must hold ints (distances) or floats (positions), got {offsets!r}")
        fractional = any(isinstance(x, float) for x in flat)
        if not fractional and any(not -2**63 <= x < 2**63 for x in flat):
            raise ValueError(f"offsets must be distances <= 2^31 - 1 (they are read as int32), got {offsets!r}")
        try:  # checked on the host, then moved: no device sync for the checks
            host = torch.tensor(offsets, dtype=torch.float64 if fractional else torch.int64)
        except ValueError as e:  # ragged nested lists
            raise ValueError(f"offsets rows must have one length; pad short rows with {PADDING}: {e}") from None
        host = host.reshape(0) if host.numel() == 0 else host
        _check_shape(host, q)
        if check_values:  # on the Python numbers, so that torch.compile traces no data-dependent op
            rows = [list(row) for row in offsets] if host.dim() == 2 else [list(offsets)]
            for h, row in enumerate(rows):
                _check_row(row, window, fractional, f"[{h}]" if host.dim() == 2 else "")
        dtype = (torch.float64 if q.dtype == torch.float64 else torch.float32) if fractional else torch.int32
        return host.to(device=q.device, dtype=dtype)
    if offsets.is_complex() or offsets.dtype == torch.bool:
        raise ValueError(f"offsets must be an integer or floating tensor, got {offsets.dtype}")
    _check_shape(offsets, q)
    if isinstance(q, torch.Tensor) and offsets.device != q.device:
        raise ValueError(f"offsets must be on q's device {q.device}, got {offsets.device}")
    # Meta tensors have no values to check (shape propagation only).
    if check_values and not _is_compiling() and not offsets.is_meta:
        _check_tensor_values_once(offsets, window)
    return offsets
