"""The fractional dk/dv pass's row 16 shares: each warp's last key takes f P dO
and f dS q of the query one row past its strip, which the next warp (or the
next key tile's block) forms as its row 0 and hands over at the pass's end
(the default), or which the warp forms alone from dot products with edge rows
(FIBSPARSE_DKDV_NEXT_WARP_SHARE=0). Either way every row of dk and dv matches
the float64 reference, dense and packed, each tile's last key included; a
bad value of the switch is refused before any kernel runs."""
import pytest
import torch

from fibsparse_ext import fibsparse_attn_ref

from utils import (assert_refused_before_any_kernel, cuda_kernels_of, fibonacci_offsets, packed, random_rows,
                   rel_err, requires_cuda)

SWITCH = "FIBSPARSE_DKDV_NEXT_WARP_SHARE"
HAND_OVER_KERNEL = "add_next_tile_shares_kernel"


def reference_grads(q, k, v, window, offsets, dout, dlse, scale):
    """dq, dk, dv and d offsets of the float64 reference (one sequence)."""
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    pos = offsets.double().requires_grad_()
    out, lse = fibsparse_attn_ref(q64, k64, v64, window, pos, softmax_scale=scale, return_lse=True)
    return torch.autograd.grad([out, lse], [q64, k64, v64, pos], [dout.double(), dlse.double()])


def assert_rows_match(name, got, ref, tolerance=0.03):
    """Every row (key or query, head) within `tolerance` of its reference row's
    norm: a share missing from one key moves that row by far more (with a short
    window a key has few readers), where a row's bf16 rounding moves it ~1%."""
    got, ref = got.double().flatten(0, -3), ref.double().flatten(0, -3)
    error = (got - ref).norm(dim=-1)
    bound = tolerance * ref.norm(dim=-1) + 1e-6 * ref.norm(dim=-1).max()
    bad = (~(error <= bound)).nonzero()
    assert bad.numel() == 0, (name, bad[:8].tolist(), (error / ref.norm(dim=-1).clamp_min(1e-30)).max().item())


def backward_both_ways(monkeypatch, op, args):
    """op's gradients with the shares handed over (the default) and formed
    alone (the switch at 0), every output poisoned first; asserts which ran."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    monkeypatch.delenv(SWITCH, raising=False)
    shared, kernels = cuda_kernels_of(lambda: op(*args))
    assert any(HAND_OVER_KERNEL in name for name in kernels), kernels
    monkeypatch.setenv(SWITCH, "0")
    alone, kernels = cuda_kernels_of(lambda: op(*args))
    assert not any(HAND_OVER_KERNEL in name for name in kernels), kernels
    monkeypatch.delenv(SWITCH)
    # Only dk and dv take the shares: the stored dS, so dq and d offsets, are the same.
    assert torch.equal(shared[0], alone[0]) and torch.equal(shared[3], alone[3])
    return shared, alone


@requires_cuda
@pytest.mark.parametrize("seqlen", [1024, 3037])
@pytest.mark.parametrize("heads,heads_kv", [(4, 4), (8, 2), (3, 1)])
@pytest.mark.parametrize("window", [16, 128])
def test_cuda_next_warp_shares_match_the_reference_row_by_row(monkeypatch, seqlen, heads, heads_kv, window):
    """Whole and ragged last key tiles; one key in 16 takes its share from the
    next warp, one in 64 from the next tile's block."""
    dtype, scale = torch.bfloat16, 128 ** -0.5
    offsets = fibonacci_offsets(window, seqlen, fractional=True)
    q = random_rows((1, seqlen, heads, 128), dtype, window)
    k, v = (random_rows((1, seqlen, heads_kv, 128), dtype, window + i) for i in (1, 2))
    out, lse = torch.ops.fibsparse.fwd(q, k, v, offsets, [window], scale)
    dout, dlse = random_rows(out.shape, dtype, 7), random_rows(lse.shape, torch.float32, 8)
    ref = reference_grads(q, k, v, window, offsets, dout, dlse, scale)
    for grads in backward_both_ways(monkeypatch, torch.ops.fibsparse.bwd,
                                    (dout, q, k, v, out, lse, dlse, offsets, [window], scale)):
        for name, got, expected in zip(["dq", "dk", "dv"], grads, ref):
            assert_rows_match(name, got, expected)
        assert rel_err(grads[3], ref[3]) < 1e-2


@requires_cuda
def test_cuda_packed_next_warp_shares_match_the_reference_row_by_row(monkeypatch):
    """A packed batch: a tile's next tile is its own sequence's, never the next
    sequence's first (sequences of 0, 1, 63, 64, 65 and 128 keys, ragged ones)."""
    lengths = [700, 1, 0, 64, 65, 129, 63, 128, 300]
    cu, longest = packed(lengths, "cuda")
    window, dtype, scale = 16, torch.float16, 128 ** -0.5
    offsets = fibonacci_offsets(window, longest, fractional=True)
    q = random_rows((sum(lengths), 8, 128), dtype, 20)
    k, v = (random_rows((sum(lengths), 2, 128), dtype, 21 + i) for i in range(2))
    out, lse = torch.ops.fibsparse.varlen_fwd(q, k, v, cu, cu, longest, longest, offsets, [window], scale)
    dout, dlse = random_rows(out.shape, dtype, 30), random_rows(lse.shape, torch.float32, 31)
    args = (dout, q, k, v, out, lse, dlse, cu, cu, longest, longest, offsets, [window], scale)
    d_offsets_ref = torch.zeros(offsets.shape, dtype=torch.float64, device="cuda")
    refs = [[], [], []]
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
        if end == start:
            continue
        rows = slice(start, end)
        grads = reference_grads(q[None, rows], k[None, rows], v[None, rows], window, offsets, dout[None, rows],
                                dlse[:, rows][None], scale)
        for ref, grad in zip(refs, grads):
            ref.append(grad[0])
        d_offsets_ref += grads[3]
    for grads in backward_both_ways(monkeypatch, torch.ops.fibsparse.varlen_bwd, args):
        for name, got, ref in zip(["dq", "dk", "dv"], grads, refs):
            assert_rows_match(name, got, torch.cat(ref))
        assert rel_err(grads[3], d_offsets_ref) < 1e-2


@requires_cuda
@pytest.mark.parametrize("fractional", [True, False])
@pytest.mark.parametrize("setting", ["off", "", "2"])
def test_cuda_next_warp_share_switch_is_checked(monkeypatch, setting, fractional):
    """The switch takes 0 or 1: any other value is refused, naming the
    variable, what it got and what it takes, before any of the backward's
    kernels runs; with integer offsets too, which read it though they have no
    second rows."""
    window, seqlen = 128, 300
    offsets = fibonacci_offsets(window, seqlen, fractional)
    q, k, v = (random_rows((1, seqlen, 2, 128), torch.bfloat16, i) for i in range(3))
    out, lse = torch.ops.fibsparse.fwd(q, k, v, offsets, [window], 0.125)
    dout, dlse = random_rows(out.shape, torch.bfloat16, 3), random_rows(lse.shape, torch.float32, 4)
    assert_refused_before_any_kernel(
        monkeypatch, SWITCH, setting,
        lambda: torch.ops.fibsparse.bwd(dout, q, k, v, out, lse, dlse, offsets, [window], 0.125))
