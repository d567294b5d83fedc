"""The window alone's dq pass from stored dS with two query tiles a block
(head_dim 64 and below): bitwise the dq of one tile a block
(FIBSPARSE_DQ_TILE_PAIRS=0), on sequences whose tile counts are odd and even
and whose last tile is ragged, dense and packed."""
import re

import pytest
import torch

from fibsparse_ext import fibsparse_attn_ref
from utils import TOLERANCE, cuda_kernels_of, packed, rel_err, requires_cuda

SWITCH = "FIBSPARSE_DQ_TILE_PAIRS"
PAIRS_KERNEL = re.compile(r"dq_from_dscores_kernel<[^>]*, 2>")
ONE_TILE_KERNEL = re.compile(r"dq_from_dscores_kernel<[^>]*, 1>")


def random_rows(shape, dtype, seed):
    generator = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(shape, generator=generator, device="cuda", dtype=torch.float32).to(dtype)


def ran(pattern, kernels):
    return any(pattern.search(name) for name in kernels)


def backward(monkeypatch, pairs, op, *args):
    """The backward op's dq, dk, dv with tile pairs on or off, and the names
    of the kernels it launched."""
    monkeypatch.setenv(SWITCH, "1" if pairs else "0")
    grads, kernels = cuda_kernels_of(lambda: op(*args)[:3])
    monkeypatch.delenv(SWITCH)
    return grads, kernels


def dense_case(dtype, head_dim, window, seqlen, heads, seed, batch=1):
    q, k, v = (random_rows((batch, seqlen, heads, head_dim), dtype, seed + i) for i in range(3))
    none = torch.zeros(0, dtype=torch.int32, device="cuda")
    scale = head_dim ** -0.5
    out, lse = torch.ops.fibsparse.fwd(q, k, v, none, [window], scale)
    dout = random_rows(out.shape, dtype, seed + 3)
    dlse = random_rows(lse.shape, torch.float32, seed + 4)
    return q, k, v, none, scale, out, lse, dout, dlse


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [16, 32, 64])
@pytest.mark.parametrize("window", [1, 65, 128, 129])
@pytest.mark.parametrize("seqlen", [20037, 20480, 64, 65])
def test_cuda_tile_pairs_are_bitwise_one_tile_a_block(monkeypatch, dtype, head_dim, window, seqlen):
    """dq bitwise that of one tile a block (dk and dv too: the dk/dv pass is
    the same), with and without a gradient of lse, at windows whose bands meet
    one, two and three key tiles; 20037 rows end in a ragged tile of an odd
    count (the last block's second tile holds no queries), 20480 in whole
    tiles of an even count, 64 and 65 rows in one block. The buffers the
    passes write start as NaN (FIBSPARSE_POISON_OUTPUTS), so an element left
    unwritten shows."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    q, k, v, none, scale, out, lse, dout, dlse = dense_case(dtype, head_dim, window, seqlen, heads=6,
                                                            seed=window + head_dim + seqlen)
    for grad_lse in (dlse, None):
        args = (dout, q, k, v, out, lse, grad_lse, none, [window], scale)
        paired, kernels_paired = backward(monkeypatch, True, torch.ops.fibsparse.bwd, *args)
        one_tile, kernels_one = backward(monkeypatch, False, torch.ops.fibsparse.bwd, *args)
        assert ran(PAIRS_KERNEL, kernels_paired) and not ran(ONE_TILE_KERNEL, kernels_paired), kernels_paired
        assert ran(ONE_TILE_KERNEL, kernels_one) and not ran(PAIRS_KERNEL, kernels_one), kernels_one
        for name, a, b in zip(["dq", "dk", "dv"], paired, one_tile):
            assert a.isfinite().all(), (name, grad_lse is None)
            assert torch.equal(a, b), (name, grad_lse is None)


@requires_cuda
def test_cuda_tile_pairs_against_the_reference():
    """dq with tile pairs (the default at head_dim 64) within the float64
    reference's bounds: two sequences of the batch, a GQA group of 2, bf16,
    window 128, an odd count of tiles."""
    dtype, head_dim, window, seqlen = torch.bfloat16, 64, 128, 1000
    q = random_rows((2, seqlen, 4, head_dim), dtype, 1)
    k, v = (random_rows((2, seqlen, 2, head_dim), dtype, i) for i in (2, 3))
    none = torch.zeros(0, dtype=torch.int32, device="cuda")
    scale = head_dim ** -0.5
    out, lse = torch.ops.fibsparse.fwd(q, k, v, none, [window], scale)
    dout, dlse = random_rows(out.shape, dtype, 4), random_rows(lse.shape, torch.float32, 5)
    grads, kernels = cuda_kernels_of(
        lambda: torch.ops.fibsparse.bwd(dout, q, k, v, out, lse, dlse, none, [window], scale)[:3])
    assert ran(PAIRS_KERNEL, kernels), kernels
    inputs = [t.double().requires_grad_() for t in (q, k, v)]
    ref_out, ref_lse = fibsparse_attn_ref(*inputs, window, none, softmax_scale=scale, return_lse=True)
    ref_grads = torch.autograd.grad([ref_out, ref_lse], inputs, [dout.double(), dlse.double()])
    for name, a, b in zip(["dq", "dk", "dv"], grads, ref_grads):
        assert rel_err(a, b) < TOLERANCE[dtype], name


@requires_cuda
def test_cuda_packed_tile_pairs_are_bitwise_one_tile_a_block(monkeypatch):
    """A packed batch (sequences empty, of one row, of one tile, ragged, of
    odd and even tile counts): each sequence's pairs start at its own first
    tile; bitwise the dq of one tile a block."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    lengths = [20000, 1, 0, 64, 9000, 4097, 63, 12345, 128]
    cu, longest = packed(lengths, "cuda")
    head_dim, window, scale = 64, 128, 0.125
    q, k, v = (random_rows((sum(lengths), 4, head_dim), torch.bfloat16, 20 + i) for i in range(3))
    none = torch.zeros(0, dtype=torch.int32, device="cuda")
    out, lse = torch.ops.fibsparse.varlen_fwd(q, k, v, cu, cu, longest, longest, none, [window], scale)
    dout, dlse = random_rows(out.shape, torch.bfloat16, 30), random_rows(lse.shape, torch.float32, 31)
    args = (dout, q, k, v, out, lse, dlse, cu, cu, longest, longest, none, [window], scale)
    paired, kernels_paired = backward(monkeypatch, True, torch.ops.fibsparse.varlen_bwd, *args)
    one_tile, kernels_one = backward(monkeypatch, False, torch.ops.fibsparse.varlen_bwd, *args)
    assert ran(PAIRS_KERNEL, kernels_paired) and ran(ONE_TILE_KERNEL, kernels_one)
    for name, a, b in zip(["dq", "dk", "dv"], paired, one_tile):
        assert a.isfinite().all(), name
        assert torch.equal(a, b), name


@requires_cuda
@pytest.mark.parametrize("tensor", ["q", "dout"])
def test_cuda_tile_pairs_keep_a_non_finite_row_to_its_extent(monkeypatch, tensor):
    """A NaN in one query's q or dO row reaches dq only in that query's row
    (docs/semantics.md), with the query at a tile pair's first row, its
    second tile's first row and the sequence's last; every finite element
    equals one tile a block's."""
    head_dim, window, seqlen = 64, 128, 20037
    q, k, v, none, scale, out, lse, dout, dlse = dense_case(torch.bfloat16, head_dim, window, seqlen, heads=4, seed=11)
    rows = [128 * 40, 128 * 77 + 64, seqlen - 1]
    for row in rows:
        (q if tensor == "q" else dout)[0, row, 3, 5] = float("nan")
    if tensor == "q":
        out, lse = torch.ops.fibsparse.fwd(q, k, v, none, [window], scale)
    args = (dout, q, k, v, out, lse, dlse, none, [window], scale)
    paired, _ = backward(monkeypatch, True, torch.ops.fibsparse.bwd, *args)
    one_tile, _ = backward(monkeypatch, False, torch.ops.fibsparse.bwd, *args)
    bad_rows = (~paired[0][0].isfinite()).flatten(1).any(1)
    allowed = torch.zeros_like(bad_rows)
    allowed[rows] = True
    assert not (bad_rows & ~allowed).any(), bad_rows.nonzero().flatten().tolist()[:20]
    assert bad_rows[rows].all()
    for name, a, b in zip(["dq", "dk", "dv"], paired, one_tile):
        both = a.isfinite() & b.isfinite()
        assert torch.equal(a[both], b[both]), name
        assert torch.equal(a.isfinite(), b.isfinite()), name


@requires_cuda
def test_cuda_head_dim_128_keeps_one_tile_a_block(monkeypatch):
    """At head_dim 128 the pass keeps one tile a block, with the switch on."""
    q, k, v = (random_rows((1, 1000, 2, 128), torch.bfloat16, i) for i in range(3))
    none = torch.zeros(0, dtype=torch.int32, device="cuda")
    out, lse = torch.ops.fibsparse.fwd(q, k, v, none, [128], 128 ** -0.5)
    args = (torch.randn_like(out), q, k, v, out, lse, None, none, [128], 128 ** -0.5)
    grads, kernels = backward(monkeypatch, True, torch.ops.fibsparse.bwd, *args)
    assert ran(ONE_TILE_KERNEL, kernels) and not ran(PAIRS_KERNEL, kernels), kernels
    assert all(g.isfinite().all() for g in grads)


@requires_cuda
@pytest.mark.parametrize("setting", ["off", "", "2"])
def test_cuda_tile_pairs_switch_is_checked(monkeypatch, setting):
    """FIBSPARSE_DQ_TILE_PAIRS takes 0 or 1: any other value is refused,
    naming the variable, what it got and what it takes, before the backward
    launches any kernel (so before the dk/dv pass writes anything)."""
    q, k, v = (random_rows((1, 128, 2, 64), torch.float16, i) for i in range(3))
    none = torch.zeros(0, dtype=torch.int32, device="cuda")
    out, lse = torch.ops.fibsparse.fwd(q, k, v, none, [128], 0.125)
    dout, dlse = torch.randn_like(out), torch.zeros_like(lse)
    torch.cuda.synchronize()
    monkeypatch.setenv(SWITCH, setting)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        with pytest.raises(RuntimeError, match=f"{SWITCH} must be one of 0, 1 \\(or unset\\), got '{setting}'"):
            torch.ops.fibsparse.bwd(dout, q, k, v, out, lse, dlse, none, [128], 0.125)
        torch.cuda.synchronize()
    launched = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert not any("fibsparse" in name for name in launched), launched
