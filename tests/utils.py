"""Shared test helpers: random inputs, the error measure, devices. The tests import it as
`utils`: tests/ has no __init__.py, so pytest puts tests/ itself on sys.path."""
import pytest
import torch

from fibsparse_ext.accuracy import TOLERANCE  # noqa: F401  (used by the tests through utils)
from fibsparse_ext.accuracy import relative_error as rel_err  # noqa: F401

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]


def random_qkv(batch, seqlen_q, heads, heads_kv, head_dim, dtype, device, seqlen_k=None, requires_grad=True):
    """Fresh random q, k, v (never zeros), in float64 on the CPU first so that
    every dtype and device sees the same numbers."""
    seqlen_k = seqlen_q if seqlen_k is None else seqlen_k
    shapes = [(batch, seqlen_q, heads, head_dim), (batch, seqlen_k, heads_kv, head_dim),
              (batch, seqlen_k, heads_kv, head_dim)]
    return [torch.randn(s, dtype=torch.float64).to(device=device, dtype=dtype).requires_grad_(requires_grad)
            for s in shapes]


def random_offsets(window, num_offsets, heads=None, fractional=False, device="cpu", dtype=torch.float64,
                   spread=40, generator=None):
    """Strictly increasing offsets >= window (integer) or positions (fractional),
    shared (K,) or per head (heads, K)."""
    rows = []
    for _ in range(heads or 1):
        gaps = torch.rand(num_offsets, generator=generator, dtype=torch.float64) * spread + 1.0
        row = window + torch.cumsum(gaps, 0) - 1.0
        rows.append(row if fractional else row.floor().to(torch.int64))
    out = torch.stack(rows) if heads else rows[0]
    return out.to(device=device, dtype=dtype if fractional else torch.int32)
