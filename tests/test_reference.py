"""The reference itself, against an independent oracle: dense attention with
an explicit (seqlen x seqlen) weight matrix that spells out the pattern of docs/semantics.md
entry by entry. Plus its memory bound at seqlen 16384."""
import math
import os
import subprocess
import sys

import pytest
import torch

from fibsparse_ext import fibsparse_attn_ref
from utils import random_offsets, random_qkv, rel_err


def oracle(q, k, v, window, offsets, scale=None):
    """Output and lse with every key weight built by loops over (head, query, distance)."""
    batch, seqlen_q, heads, dim = q.shape
    seqlen_k, group = k.shape[1], heads // k.shape[2]
    scale = 1 / math.sqrt(dim) if scale is None else scale
    rows = offsets if offsets.dim() == 2 else offsets.expand(heads, -1)
    out = torch.empty(q.shape, dtype=torch.float64)
    lse = torch.empty(batch, heads, seqlen_q, dtype=torch.float64)
    for h in range(heads):
        kh, vh = k[:, :, h // group].double(), v[:, :, h // group].double()
        for i in range(seqlen_q):
            pos = i + seqlen_k - seqlen_q
            # Each attended key is a mix of rows: (weights over k's rows).
            mixes = [torch.nn.functional.one_hot(torch.tensor(pos - d), seqlen_k).double()
                     for d in range(window) if pos - d >= 0]
            for p in rows[h].tolist():
                if p == -1 or pos - p < 0:
                    continue
                a, f = math.floor(p), p - math.floor(p)
                mix = torch.zeros(seqlen_k, dtype=torch.float64)
                mix[pos - a] += 1 - f
                if f > 0:
                    mix[pos - a - 1] += f
                mixes.append(mix)
            mixes = torch.stack(mixes)  # (keys, seqlen_k)
            keys, values = mixes @ kh, mixes @ vh  # (batch, keys, dim)
            scores = scale * torch.einsum("bd,bkd->bk", q[:, i, h].double(), keys)
            lse[:, h, i] = torch.logsumexp(scores, -1)
            out[:, i, h] = torch.einsum("bk,bkd->bd", scores.softmax(-1), values)
    return out, lse


@pytest.mark.parametrize("fractional", [False, True])
@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("seqlen_q,seqlen_k,window", [(30, 30, 3), (9, 40, 5), (6, 6, 10)])
def test_reference_matches_oracle(fractional, per_head, seqlen_q, seqlen_k, window):
    torch.manual_seed(seqlen_q + window)
    q, k, v = random_qkv(2, seqlen_q, 4, 2, 8, torch.float64, "cpu", seqlen_k=seqlen_k, requires_grad=False)
    offsets = random_offsets(window, 4, 4 if per_head else None, fractional, "cpu", torch.float64, spread=7)
    out, lse = fibsparse_attn_ref(q, k, v, window, offsets, return_lse=True)
    expected_out, expected_lse = oracle(q, k, v, window, offsets)
    assert rel_err(out, expected_out) < 1e-13 and rel_err(lse, expected_lse) < 1e-13


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reference_weights_sum_to_one_at_large_scores(dtype):
    """Scores near 1e7 (where float32's spacing is 1), a position inside the
    window reading the query's own key a second time, values all 1: the output
    is exactly 1, as the kernels give, because the weights are normalised by
    their sum rather than by an lse rounded at the scores' magnitude."""
    q = torch.full((1, 3, 1, 1), 3000.0, dtype=dtype)
    v = torch.ones(1, 3, 1, 1, dtype=dtype)
    out = fibsparse_attn_ref(q, q, v, 1, torch.tensor([0.0, 1.0], dtype=dtype))
    assert torch.equal(out, torch.ones_like(out))


def test_reference_position_gradient_is_finite_difference():
    """d out / d position through the reference equals a central difference."""
    torch.manual_seed(1)
    q, k, v = random_qkv(1, 25, 2, 1, 8, torch.float64, "cpu", requires_grad=False)
    pos = torch.tensor([3.3, 7.6, 12.2], dtype=torch.float64, requires_grad=True)
    weights = torch.randn(q.shape, dtype=torch.float64)
    (fibsparse_attn_ref(q, k, v, 2, pos) * weights).sum().backward()
    for n in range(3):
        step = torch.zeros(3, dtype=torch.float64)
        step[n] = 1e-6
        plus = (fibsparse_attn_ref(q, k, v, 2, pos.detach() + step) * weights).sum()
        minus = (fibsparse_attn_ref(q, k, v, 2, pos.detach() - step) * weights).sum()
        assert abs(pos.grad[n] - (plus - minus) / 2e-6) < 1e-6 * max(1.0, abs(pos.grad[n]))


MEMORY_SCRIPT = """
import resource, torch
from fibsparse_ext import fibsparse_attn_ref
torch.manual_seed(0)
q, k, v = (torch.randn(1, 16384, 8, 64, requires_grad=True) for _ in range(3))
offsets = [144, 233, 377, 610, 987, 1597, 2584, 4181, 6765, 10946]
fibsparse_attn_ref(q, k, v, 128, offsets).square().sum().backward()
assert all(t.grad is not None for t in (q, k, v))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_reference_long_sequence_memory():
    """Forward + backward at seqlen 16384, window 128, head_dim 64, 8 heads: peak RSS < 8 GB."""
    result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, timeout=900,
                            env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert result.returncode == 0, result.stderr
    peak_gb = int(result.stdout.split()[-1]) / 2**20  # ru_maxrss is in KiB on Linux
    print(f"reference peak RSS: {peak_gb:.2f} GB")
    assert peak_gb < 8
