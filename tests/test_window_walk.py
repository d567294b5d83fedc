"""The window alone's dk/dv pass as a walk over runs of key tiles (one query
head per kv head, head_dim 32 and below, on the backward with stored dS):
bitwise the one-tile pass's gradients (FIBSPARSE_WINDOW_WALK=0), on inputs
large enough that every block walks several tiles."""
import pytest
import torch

from fibsparse_ext import fibsparse_attn_ref
from utils import (TOLERANCE, assert_refused_before_any_kernel, cuda_kernels_of, packed, random_rows, rel_err,
                   requires_cuda)

SWITCH = "FIBSPARSE_WINDOW_WALK"
WALK_KERNEL = "dkdv_window_walk_kernel"
# 16 heads of 20037 rows: 5024 key tiles (the last one ragged), several times
# the blocks an H100 or H200 holds at once, so that runs are several tiles
# long and the last run of each head is shorter than the others.
HEADS, SEQLEN = 16, 20037


def backward(monkeypatch, walk, *args):
    """The backward op's dq, dk, dv with the walk on or off, and whether the
    walking kernel ran."""
    monkeypatch.setenv(SWITCH, "1" if walk else "0")
    grads, kernels = cuda_kernels_of(lambda: torch.ops.fibsparse.bwd(*args)[:3])
    monkeypatch.delenv(SWITCH)
    return grads, any(WALK_KERNEL in name for name in kernels)


def dense_case(dtype, head_dim, window, seed, batch=1):
    q, k, v = (random_rows((batch, SEQLEN, HEADS, head_dim), dtype, seed + i) for i in range(3))
    none = torch.zeros(0, dtype=torch.int32, device="cuda")
    scale = head_dim ** -0.5
    out, lse = torch.ops.fibsparse.fwd(q, k, v, none, [window], scale)
    dout = random_rows(out.shape, dtype, seed + 3)
    dlse = random_rows(lse.shape, torch.float32, seed + 4)
    return q, k, v, none, scale, out, lse, dout, dlse


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [16, 32])
@pytest.mark.parametrize("window", [1, 65, 128, 129])
def test_cuda_walk_is_bitwise_the_one_tile_pass(monkeypatch, dtype, head_dim, window):
    """dq, dk and dv bitwise those of the one-tile pass, with and without a
    gradient of lse, at windows of one chunk (1), two (65) and three (128, 129)
    a key tile, where the walk stages one new chunk a tile; the buffers the pass
    writes start as NaN (FIBSPARSE_POISON_OUTPUTS), so an element it leaves
    unwritten shows. And the walk is what ran."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    q, k, v, none, scale, out, lse, dout, dlse = dense_case(dtype, head_dim, window, seed=window + head_dim)
    for grad_lse in (dlse, None):
        args = (dout, q, k, v, out, lse, grad_lse, none, [window], scale)
        walked, ran_walk = backward(monkeypatch, True, *args)
        one_tile, ran_walk_off = backward(monkeypatch, False, *args)
        assert ran_walk and not ran_walk_off
        for name, a, b in zip(["dq", "dk", "dv"], walked, one_tile):
            assert a.isfinite().all(), (name, grad_lse is None)
            assert torch.equal(a, b), (name, grad_lse is None)


@requires_cuda
def test_cuda_walk_against_the_reference():
    """The walk's gradients (the default here) within the float64 reference's
    bounds, two sequences of the batch, bf16, head_dim 32, window 128."""
    dtype, head_dim, window = torch.bfloat16, 32, 128
    q, k, v, none, scale, out, lse, dout, dlse = dense_case(dtype, head_dim, window, seed=7, batch=2)
    grads, kernels = cuda_kernels_of(
        lambda: torch.ops.fibsparse.bwd(dout, q, k, v, out, lse, dlse, none, [window], scale)[:3])
    assert any(WALK_KERNEL in name for name in kernels)
    inputs = [t.double().requires_grad_() for t in (q, k, v)]
    ref_out, ref_lse = fibsparse_attn_ref(*inputs, window, none, softmax_scale=scale, return_lse=True)
    ref_grads = torch.autograd.grad([ref_out, ref_lse], inputs, [dout.double(), dlse.double()])
    for name, a, b in zip(["dq", "dk", "dv"], grads, ref_grads):
        assert rel_err(a, b) < TOLERANCE[dtype], name


@requires_cuda
def test_cuda_packed_walk_is_bitwise_the_one_tile_pass(monkeypatch):
    """A packed batch (sequences empty, one row, one tile, ragged, and long
    enough for runs of several tiles) walks each sequence's tiles from its own
    first one: bitwise the one-tile pass's gradients."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    lengths = [20000, 1, 0, 64, 9000, 4097, 63, 12345]
    cu, longest = packed(lengths, "cuda")
    head_dim, window, scale = 32, 128, 0.125
    q, k, v = (random_rows((sum(lengths), HEADS, head_dim), torch.bfloat16, 20 + i) for i in range(3))
    none = torch.zeros(0, dtype=torch.int32, device="cuda")
    out, lse = torch.ops.fibsparse.varlen_fwd(q, k, v, cu, cu, longest, longest, none, [window], scale)
    dout, dlse = random_rows(out.shape, torch.bfloat16, 30), random_rows(lse.shape, torch.float32, 31)
    args = (dout, q, k, v, out, lse, dlse, cu, cu, longest, longest, none, [window], scale)
    results = []
    for walk in (True, False):
        monkeypatch.setenv(SWITCH, "1" if walk else "0")
        grads, kernels = cuda_kernels_of(lambda: torch.ops.fibsparse.varlen_bwd(*args)[:3])
        assert any(WALK_KERNEL in name for name in kernels) == walk
        results.append(grads)
    for name, a, b in zip(["dq", "dk", "dv"], *results):
        assert a.isfinite().all(), name
        assert torch.equal(a, b), name


def extent_of_query(row, window, rows):
    """The keys whose 16-key tile may stage query `row` as a band reader
    (docs/semantics.md): tiles whose keys' readers [key, key + window - 1],
    widened by 15 rows each way, hold the row."""
    keys = torch.arange(rows, device="cuda")
    tile_first = keys // 16 * 16
    return (row >= tile_first - 15) & (row <= tile_first + 15 + window - 1 + 15)


@requires_cuda
@pytest.mark.parametrize("tensor", ["q", "dout"])
def test_cuda_walk_non_finite_query_rows_stay_in_their_extent(monkeypatch, tensor):
    """A NaN in one query's q or dO row: the walk stages every row of a chunk
    up to the sequence's end (the one-tile pass stages zeros past its tile's
    last reader), so it may reach other keys, but only within the extent
    docs/semantics.md gives: dk and dv non-finite only in 16-key tiles within
    15 rows of the query's band, dq only in that query's row; every finite
    element equals the one-tile pass's."""
    head_dim, window = 32, 128
    q, k, v, none, scale, out, lse, dout, dlse = dense_case(torch.bfloat16, head_dim, window, seed=11)
    rows = []
    for row in (64 * 100 + 63, 64 * 201 + 1, SEQLEN - 1):  # a chunk's last row, a first one, the sequence's last
        (q if tensor == "q" else dout)[0, row, 3, 5] = float("nan")
        rows.append(row)
    if tensor == "q":
        out, lse = torch.ops.fibsparse.fwd(q, k, v, none, [window], scale)
    args = (dout, q, k, v, out, lse, dlse, none, [window], scale)
    walked, _ = backward(monkeypatch, True, *args)
    one_tile, _ = backward(monkeypatch, False, *args)
    allowed_keys = torch.zeros(SEQLEN, dtype=torch.bool, device="cuda")
    for row in rows:
        allowed_keys |= extent_of_query(row, window, SEQLEN)
    for name, a, b in zip(["dq", "dk", "dv"], walked, one_tile):
        bad_rows = (~a[0].isfinite()).flatten(1).any(1)
        if name == "dq":
            allowed = torch.zeros_like(bad_rows)
            allowed[rows] = True
        else:
            allowed = allowed_keys
        assert not (bad_rows & ~allowed).any(), (name, bad_rows.nonzero().flatten().tolist()[:20])
        both = a.isfinite() & b.isfinite()
        assert torch.equal(a[both], b[both]), name


@requires_cuda
@pytest.mark.parametrize("heads, heads_kv, head_dim", [(16, 16, 64), (16, 16, 128), (16, 4, 32)])
def test_cuda_walk_only_where_it_was_faster(monkeypatch, heads, heads_kv, head_dim):
    """head_dim 64 and 128 and GQA groups keep the one-tile pass (the walk
    measured slower at 64, and a group would need three chunk slots a head)."""
    q = random_rows((1, 4096, heads, head_dim), torch.bfloat16, 0)
    k, v = (random_rows((1, 4096, heads_kv, head_dim), torch.bfloat16, i) for i in (1, 2))
    none = torch.zeros(0, dtype=torch.int32, device="cuda")
    out, lse = torch.ops.fibsparse.fwd(q, k, v, none, [128], head_dim ** -0.5)
    args = (torch.randn_like(out), q, k, v, out, lse, None, none, [128], head_dim ** -0.5)
    grads, ran_walk = backward(monkeypatch, True, *args)
    assert not ran_walk and all(g.isfinite().all() for g in grads)


@requires_cuda
@pytest.mark.parametrize("layout", ["dense", "packed"])
@pytest.mark.parametrize("setting", ["off", "", "2"])
def test_cuda_walk_switch_is_checked(monkeypatch, setting, layout):
    """FIBSPARSE_WINDOW_WALK takes 0 or 1: any other value is refused, naming
    the variable, what it got and what it takes, before any of the backward's
    kernels runs (a packed batch's own offsets check included)."""
    none = torch.zeros(0, dtype=torch.int32, device="cuda")
    if layout == "dense":
        q, k, v = (random_rows((1, 128, 2, 32), torch.float16, i) for i in range(3))
        out, lse = torch.ops.fibsparse.fwd(q, k, v, none, [128], 0.125)
        args = (random_rows(out.shape, torch.float16, 3), q, k, v, out, lse, torch.zeros_like(lse), none, [128], 0.125)
        op = torch.ops.fibsparse.bwd
    else:
        cu, longest = packed([100, 1, 60], "cuda")
        q, k, v = (random_rows((161, 2, 32), torch.float16, i) for i in range(3))
        out, lse = torch.ops.fibsparse.varlen_fwd(q, k, v, cu, cu, longest, longest, none, [128], 0.125)
        args = (random_rows(out.shape, torch.float16, 3), q, k, v, out, lse, torch.zeros_like(lse), cu, cu, longest,
                longest, none, [128], 0.125)
        op = torch.ops.fibsparse.varlen_bwd
    assert_refused_before_any_kernel(monkeypatch, SWITCH, setting, lambda: op(*args))
