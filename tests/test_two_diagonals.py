"""A fractional position's two rows in one product. The Hopper forward with two
heads a warpgroup adds a strip's P V as one 16 x 16 operand against its 8 rows
and the 8 one further back (FIBSPARSE_FWD_TWO_DIAGONALS=0: two diagonal
products of 8 rows): the same lse bits, every output row up to rounding,
each tile's first query (whose row one back is the prefix's) against the
float64 reference. In the backward with stored dS, at head_dim 64 and 128, the dk/dv pass adds key x's (1 - f) of row x's P and dS
and f of row x + 1's as one two-diagonal tile against the strip's rows 0-15
(key 15's share of row 16 comes from the next warp), and the dq pass adds
query x's f dS at its second row and (1 - f) dS at its first the same way,
query 15's first row (the strip's row 16, outside the tile) through a sum in
the lanes' columns. With FIBSPARSE_DKDV_TWO_DIAGONALS=0 and
FIBSPARSE_DQ_TWO_DIAGONALS=0 each pass takes two diagonal products instead
(the dk/dv pass also without the next warp's shares, swizzled stages or its v
rows in shared memory; the dq pass's k rows are padded either way). Both give every row of dq, dk and dv up to rounding,
dense and packed, the other gradients bitwise, and both meet the float64
reference; a bad value of either switch is refused before any kernel runs.
With one head a warpgroup the Hopper forward takes a fractional strip's scores
against the rows one further back from its own tile's subdiagonal (each warp's
first query from a 16 x 8 product against the 8 rows before the strip;
FIBSPARSE_FWD_SUBDIAGONAL=0: a second 16 x 16 product): the same products in
the same order, so out and lse are bitwise those of the second product."""
import pytest
import torch

from fibsparse_ext import fibsparse_attn, fibsparse_attn_ref

from utils import (FRACTIONAL_POSITIONS, FRACTIONAL_WINDOW, HOPPER, PACKED_LENGTHS, assert_refused_before_any_kernel, assert_rows_match, backward_call, cuda_kernels_of,
                   dense_backward_case, fibonacci_offsets, gqa_forward_call, packed_backward_case, random_rows,
                   rel_err, requires_cuda, template_arguments)

FWD_SWITCH = "FIBSPARSE_FWD_TWO_DIAGONALS"
SUBDIAGONAL_SWITCH = "FIBSPARSE_FWD_SUBDIAGONAL"
DKDV_SWITCH = "FIBSPARSE_DKDV_TWO_DIAGONALS"
DQ_SWITCH = "FIBSPARSE_DQ_TWO_DIAGONALS"

WINDOW, POSITIONS = FRACTIONAL_WINDOW, FRACTIONAL_POSITIONS


def two_diagonals_of_forward(kernels):
    """fwd_hopper_kernel's seventh template argument, kTwoDiagonals."""
    return template_arguments(kernels, "fwd_hopper_kernel")[6]


def two_diagonals_argument(kernels):
    """dkdv_mma_kernel's seventh template argument, kTwoDiagonals."""
    return template_arguments(kernels, "dkdv_mma_kernel")[6]


def assert_two_diagonals_match(monkeypatch, op, args, reference):
    """op's gradients with both passes' two-diagonal products (the default)
    and with each switched off, every output poisoned first: switching one
    pass off changes only its own outputs (dk and dv, or dq) and those up to
    rounding, row by row; all three within the accuracy contract of the
    float64 reference."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    # The dk/dv pass's product also needs the next warp's shares, swizzled
    # stages and the v rows in shared memory.
    for switch in (DKDV_SWITCH, DQ_SWITCH, "FIBSPARSE_DKDV_NEXT_WARP_SHARE", "FIBSPARSE_DKDV_SWIZZLE",
                   "FIBSPARSE_DKDV_V_SMEM", "FIBSPARSE_DQ_SWIZZLE", "FIBSPARSE_DQ_POSITION_SUMS_FIRST"):
        monkeypatch.delenv(switch, raising=False)
    both, kernels = cuda_kernels_of(lambda: op(*args))
    v_in_smem, swizzled = template_arguments(kernels, "dkdv_mma_kernel")[4:6]
    if (v_in_smem, swizzled) != ("true", "true"):
        pytest.skip("the dk/dv pass's blocks with their v rows (two at head_dim 128, three at 64) do not fit an SM")
    assert two_diagonals_argument(kernels) == "true", kernels
    dq_pass = template_arguments(kernels, "dq_from_dscores_with_offsets_kernel")
    # Its product (kSwizzledK, kTwoDiagonals) on swizzled k rows at head_dim
    # 64 with one head a block (kHeads), whose strips there are 16 rows; on
    # padded ones with more heads, and at 128, where swizzled ones made the
    # pass slower.
    swizzled = args[1].shape[-1] == 64 and dq_pass[3] == "1"
    assert dq_pass[5:7] == ["true" if swizzled else "false", "true"], kernels

    monkeypatch.setenv(DKDV_SWITCH, "0")
    dkdv_off, kernels = cuda_kernels_of(lambda: op(*args))
    monkeypatch.delenv(DKDV_SWITCH)
    assert two_diagonals_argument(kernels) == "false", kernels
    assert torch.equal(both[0], dkdv_off[0]) and torch.equal(both[3], dkdv_off[3])
    assert_rows_match("dk", both[1], dkdv_off[1])
    assert_rows_match("dv", both[2], dkdv_off[2])

    monkeypatch.setenv(DQ_SWITCH, "0")
    dq_off, kernels = cuda_kernels_of(lambda: op(*args))
    monkeypatch.delenv(DQ_SWITCH)
    assert template_arguments(kernels, "dq_from_dscores_with_offsets_kernel")[5:7] == ["false", "false"], kernels
    for i in (1, 2, 3):
        assert torch.equal(both[i], dq_off[i]), i
    assert_rows_match("dq", both[0], dq_off[0])

    for grads in (both, dkdv_off, dq_off):
        for name, got, ref in zip(["dq", "dk", "dv", "d offsets"], grads, reference):
            assert rel_err(got, ref) < 1e-2, name


@requires_cuda
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("positions", list(POSITIONS))
@pytest.mark.parametrize("batch,seqlen", [(1, 1024), (2, 3037)])
@pytest.mark.parametrize("heads,heads_kv", [(4, 4), (8, 2), (4, 2), (3, 1)])
def test_cuda_two_diagonal_products_are_the_two_diagonal_products(monkeypatch, positions, batch, seqlen, heads,
                                                                  heads_kv, head_dim):
    """Whole and ragged last tiles, one sequence and two; one, two and (at
    head_dim 64) four heads a dq block (MHA, GQA)."""
    offsets = torch.tensor(POSITIONS[positions], device="cuda")
    args, reference = dense_backward_case(batch, seqlen, heads, heads_kv, head_dim, torch.bfloat16, offsets, WINDOW)
    assert_two_diagonals_match(monkeypatch, torch.ops.fibsparse.bwd, args, reference)


@requires_cuda
@pytest.mark.parametrize("head_dim", [64, 128])
def test_cuda_packed_two_diagonal_products(monkeypatch, head_dim):
    """A packed batch (sequences of 0, 1, 63, 64, 65 and 128 keys, ragged ones)."""
    offsets = torch.tensor(POSITIONS["f=0.125"], device="cuda")
    args, reference = packed_backward_case(PACKED_LENGTHS, 8, 2, head_dim, torch.float16, offsets, WINDOW)
    assert_two_diagonals_match(monkeypatch, torch.ops.fibsparse.varlen_bwd, args, reference)


@requires_cuda
@pytest.mark.parametrize("switch", [FWD_SWITCH, SUBDIAGONAL_SWITCH, DKDV_SWITCH, DQ_SWITCH])
@pytest.mark.parametrize("fractional", [True, False])
@pytest.mark.parametrize("setting", ["off", "2"])
def test_cuda_two_diagonals_switch_is_checked(monkeypatch, switch, setting, fractional):
    """Each switch takes 0 or 1: any other value is refused, naming the
    variable, what it got and what it takes, before any kernel of its call
    runs (the forward's on the Hopper forward, a GQA group of 4, which reads
    both of its switches on every call; the backward's), with integer offsets
    too."""
    forward = switch in (FWD_SWITCH, SUBDIAGONAL_SWITCH)
    if forward and not HOPPER:
        pytest.skip("the Hopper forward reads it")
    offsets = fibonacci_offsets(128, 300, fractional)
    call = gqa_forward_call(offsets, 128) if forward else backward_call(offsets, 128)
    assert_refused_before_any_kernel(monkeypatch, switch, setting, call)


@pytest.mark.skipif(not HOPPER, reason="needs a compute capability 9.0 GPU and an sm_90a build")
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("positions", list(POSITIONS))
@pytest.mark.parametrize("batch,seqlen,heads", [(1, 640, 8), (2, 1000, 16)])
def test_hopper_forward_two_diagonal_product(monkeypatch, dtype, head_dim, positions, batch, seqlen, heads):
    """GQA groups of 4 (two heads a warpgroup, 32-query tiles), a ragged last
    tile, two sequences; one position whole (the diagonal product alone)."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    for switch in ("FIBSPARSE_HOPPER", "FIBSPARSE_HOPPER_PACK", "FIBSPARSE_HOPPER_TILES", FWD_SWITCH):
        monkeypatch.delenv(switch, raising=False)
    q = random_rows((batch, seqlen, heads, head_dim), dtype, seqlen + head_dim)
    k, v = (random_rows((batch, seqlen, heads // 4, head_dim), dtype, seqlen + i) for i in (1, 2))
    offsets = torch.tensor(POSITIONS[positions], device="cuda")
    (out, lse), kernels = cuda_kernels_of(lambda: fibsparse_attn(q, k, v, WINDOW, offsets, return_lse=True))
    assert two_diagonals_of_forward(kernels) == "true", kernels
    monkeypatch.setenv(FWD_SWITCH, "0")
    (out_off, lse_off), kernels = cuda_kernels_of(lambda: fibsparse_attn(q, k, v, WINDOW, offsets, return_lse=True))
    assert two_diagonals_of_forward(kernels) == "false", kernels
    assert torch.equal(lse, lse_off)
    assert_rows_match("out", out, out_off)
    ref = fibsparse_attn_ref(q.double(), k.double(), v.double(), WINDOW, offsets.double())
    for got in (out, out_off):
        assert rel_err(got, ref) < 1e-2
        first = slice(0, None, 32)  # each tile's first query: its row one back is in the strip's prefix
        row_err = (got[:, first].double() - ref[:, first]).norm(dim=-1) / ref[:, first].norm(dim=-1)
        assert row_err.max() < 3e-2, row_err.max()


@pytest.mark.skipif(not HOPPER, reason="needs a compute capability 9.0 GPU and an sm_90a build")
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("positions", list(POSITIONS))
@pytest.mark.parametrize("batch,seqlen_q,seqlen_k,heads,heads_kv,shape", [
    (1, 640, 640, 4, 4, "1, 1"),      # MHA: one head a block
    (2, 1000, 1000, 4, 2, "2, 1"),    # a kv group of two: two heads a block; a ragged last tile
    (1, 300, 777, 2, 2, "1, 1"),      # queries shifted by 477
    (1, 4096, 4096, 2, 2, "1, 1"),    # several tiles a block: the stage ring wraps
])
def test_hopper_forward_subdiagonal_scores(monkeypatch, dtype, head_dim, positions, batch, seqlen_q, seqlen_k, heads,
                                           heads_kv, shape):
    """One head a warpgroup: the scores against the rows one back from the
    strip's tile and a 16 x 8 product (the default) give out and lse bitwise
    those of a second 16 x 16 product (FIBSPARSE_FWD_SUBDIAGONAL=0), whole
    positions among them; both within the float64 reference's bounds, each
    tile's first query too (its row one back is the prefix's)."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    for switch in ("FIBSPARSE_HOPPER", "FIBSPARSE_HOPPER_PACK", "FIBSPARSE_HOPPER_TILES", SUBDIAGONAL_SWITCH):
        monkeypatch.delenv(switch, raising=False)
    # P V in two products on both sides (test_fwd_pv_two_diagonals.py compares the one).
    monkeypatch.setenv("FIBSPARSE_FWD_PV_TWO_DIAGONALS", "0")
    q = random_rows((batch, seqlen_q, heads, head_dim), dtype, seqlen_q + head_dim)
    k, v = (random_rows((batch, seqlen_k, heads_kv, head_dim), dtype, seqlen_k + i) for i in (1, 2))
    offsets = torch.tensor(POSITIONS[positions], device="cuda")
    (out, lse), kernels = cuda_kernels_of(lambda: fibsparse_attn(q, k, v, WINDOW, offsets, return_lse=True))
    arguments = template_arguments(kernels, "fwd_hopper_kernel")
    assert ", ".join(arguments[2:4]) == shape and arguments[5:8] == ["true", "true", "false"], kernels
    monkeypatch.setenv(SUBDIAGONAL_SWITCH, "0")
    (out_off, lse_off), kernels = cuda_kernels_of(lambda: fibsparse_attn(q, k, v, WINDOW, offsets, return_lse=True))
    assert template_arguments(kernels, "fwd_hopper_kernel")[5:8] == ["true", "false", "false"], kernels
    assert torch.equal(lse, lse_off)
    assert torch.equal(out, out_off)
    ref = fibsparse_attn_ref(q.double(), k.double(), v.double(), WINDOW, offsets.double())
    assert rel_err(out, ref) < 1e-2
    first = slice(0, None, 64)  # each tile's first query: its row one back is in the strip's prefix
    row_err = (out[:, first].double() - ref[:, first]).norm(dim=-1) / ref[:, first].norm(dim=-1)
    assert row_err.max() < 3e-2, row_err.max()
