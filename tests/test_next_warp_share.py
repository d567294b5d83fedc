"""The fractional dk/dv pass's row 16 shares: each warp's last key takes f P dO
and f dS q of the query one row past its strip, which the next warp (or the
next key tile's block) forms as its row 0 and hands over at the pass's end
(the default), or which the warp forms alone from dot products with edge rows
(FIBSPARSE_DKDV_NEXT_WARP_SHARE=0). Both give every row of dk and dv, each
tile's last key included, up to rounding, dense and packed, and both meet
the float64 reference; a bad value of the switch is refused before any
kernel runs."""
import pytest
import torch

from utils import (PACKED_LENGTHS, assert_refused_before_any_kernel, assert_rows_match, backward_call,
                   cuda_kernels_of, fibonacci_offsets, packed_backward_case, random_rows, reference_grads, rel_err,
                   requires_cuda)

SWITCH = "FIBSPARSE_DKDV_NEXT_WARP_SHARE"
HAND_OVER_KERNEL = "add_next_tile_shares_kernel"


# Few offsets, a short window and second rows of weight 0.875: a key has ~10
# readers, so the share of one (the row 16 query's) is a large part of its
# row, and a share lost or added to the wrong key moves that row far past
# rounding. One whole position (f == 0), whose second rows have no share.
WINDOW = 16
POSITIONS = [16.875, 29.875, 50.0, 70.875, 200.875]


def assert_shares_match(monkeypatch, op, args, reference):
    """op's gradients with the shares handed over (the default) and formed by
    each warp alone (the switch at 0), every output poisoned first: dq and d
    offsets bitwise the same (only dk and dv take the shares), dk and dv the
    same row by row up to rounding, and both within the accuracy contract of
    the float64 reference."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    monkeypatch.delenv(SWITCH, raising=False)
    shared, kernels = cuda_kernels_of(lambda: op(*args))
    assert any(HAND_OVER_KERNEL in name for name in kernels), kernels
    monkeypatch.setenv(SWITCH, "0")
    alone, kernels = cuda_kernels_of(lambda: op(*args))
    assert not any(HAND_OVER_KERNEL in name for name in kernels), kernels
    monkeypatch.delenv(SWITCH)
    assert torch.equal(shared[0], alone[0]) and torch.equal(shared[3], alone[3])
    assert_rows_match("dk", shared[1], alone[1])
    assert_rows_match("dv", shared[2], alone[2])
    for grads in (shared, alone):
        for name, got, ref in zip(["dq", "dk", "dv", "d offsets"], grads, reference):
            assert rel_err(got, ref) < 1e-2, name


@requires_cuda
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("batch,seqlen", [(1, 1024), (2, 3037)])
@pytest.mark.parametrize("heads,heads_kv", [(4, 4), (8, 2), (3, 1)])
def test_cuda_next_warp_shares_are_the_shares_each_warp_forms(monkeypatch, batch, seqlen, heads, heads_kv, head_dim):
    """Whole and ragged last key tiles, one sequence and two (whose key tiles
    lie one after the other in the edge rows' buffer); one key in 16 takes its
    share from the next warp, one in 64 from the next tile's block; head_dim
    64 and 128."""
    dtype, scale = torch.bfloat16, head_dim ** -0.5
    offsets = torch.tensor(POSITIONS, device="cuda")
    q = random_rows((batch, seqlen, heads, head_dim), dtype, seqlen)
    k, v = (random_rows((batch, seqlen, heads_kv, head_dim), dtype, seqlen + i) for i in (1, 2))
    out, lse = torch.ops.fibsparse.fwd(q, k, v, offsets, [WINDOW], scale)
    dout, dlse = random_rows(out.shape, dtype, 7), random_rows(lse.shape, torch.float32, 8)
    assert_shares_match(monkeypatch, torch.ops.fibsparse.bwd, (dout, q, k, v, out, lse, dlse, offsets, [WINDOW], scale),
                        reference_grads(q, k, v, WINDOW, offsets, dout, dlse, scale))


@requires_cuda
@pytest.mark.parametrize("head_dim", [64, 128])
def test_cuda_packed_next_warp_shares_are_the_shares_each_warp_forms(monkeypatch, head_dim):
    """A packed batch: a tile's next tile is its own sequence's, never the next
    sequence's first (sequences of 0, 1, 63, 64, 65 and 128 keys, ragged ones)."""
    offsets = torch.tensor(POSITIONS, device="cuda")
    args, reference = packed_backward_case(PACKED_LENGTHS, 8, 2, head_dim, torch.float16, offsets, WINDOW)
    assert_shares_match(monkeypatch, torch.ops.fibsparse.varlen_bwd, args, reference)


@requires_cuda
@pytest.mark.parametrize("fractional", [True, False])
@pytest.mark.parametrize("setting", ["off", "", "2"])
def test_cuda_next_warp_share_switch_is_checked(monkeypatch, setting, fractional):
    """The switch takes 0 or 1: any other value is refused, naming the
    variable, what it got and what it takes, before any of the backward's
    kernels runs; with integer offsets too, which read it though they have no
    second rows."""
    assert_refused_before_any_kernel(monkeypatch, SWITCH, setting,
                                     backward_call(fibonacci_offsets(128, 300, fractional), 128))
