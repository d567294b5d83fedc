"""The fractional dk/dv pass stages 16 rows of each warp's strip. In the
backward with stored dS at head_dim 64, the dk/dv pass's fractional step with
kept addresses (the two-diagonal product, the next warp's shares, the v rows in
shared memory, swizzled stages) never reads its strip's row 16, the next warp's
row 0, nor the edge rows of keys 15 and 16: each warp stages 16 rows, their
lse and delta, and key -1's edge rows alone. FIBSPARSE_DKDV_SIXTEEN_ROW_STRIPS=0
stages all 17 rows and six edge rows. What the step reads is the same, so dq,
dk, dv and d offsets are bitwise equal either way, dense and packed, MHA and
GQA, every output poisoned first (a row read that was not staged would hold a
stale row of an earlier step and move a gradient), and within the float64
reference's contract. Head_dim 128 stages every row either way; a bad value of
the switch is refused before any kernel runs."""
import pytest
import torch

from utils import (FRACTIONAL_POSITIONS, FRACTIONAL_WINDOW, assert_gradients_bitwise,
                   assert_refused_before_any_kernel, backward_call, cuda_kernels_of, dense_backward_case,
                   fibonacci_offsets, packed_fractional_case, per_head_padded_positions, requires_cuda,
                   template_arguments)

SWITCH = "FIBSPARSE_DKDV_SIXTEEN_ROW_STRIPS"
# The switches the kernel needs as they are by default.
NEEDED = ("FIBSPARSE_DKDV_FRACTIONAL_KEPT_ROWS", "FIBSPARSE_DKDV_TWO_DIAGONALS", "FIBSPARSE_DKDV_NEXT_WARP_SHARE",
          "FIBSPARSE_DKDV_SWIZZLE", "FIBSPARSE_DKDV_V_SMEM")

WINDOW, POSITIONS = FRACTIONAL_WINDOW, FRACTIONAL_POSITIONS


def strips(kernels):
    """dkdv_mma_kernel's ninth template argument, kSixteenRowStrips (absent:
    false), and its eighth, kKeptFractionalRows, and whether its v rows are in
    shared memory on swizzled stages (the fifth and sixth)."""
    arguments = template_arguments(kernels, "dkdv_mma_kernel")
    sixteen = len(arguments) > 8 and arguments[8] == "true"
    return sixteen, arguments[7] == "true", arguments[4:6] == ["true", "true"]


def unset(monkeypatch):
    for switch in (SWITCH, *NEEDED):
        monkeypatch.delenv(switch, raising=False)


def assert_sixteen_rows_bitwise(monkeypatch, op, args, reference):
    """op's gradients with 16-row strips (the default at head_dim 64) and with
    the switch's 17: bitwise equal, finite, within the contract of the float64
    reference; every output poisoned first."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    unset(monkeypatch)
    sixteen, kernels = cuda_kernels_of(lambda: op(*args))
    is_sixteen, kept, v_rows_swizzled = strips(kernels)
    if not v_rows_swizzled:
        pytest.skip("three dk/dv blocks with their v rows do not fit an SM")
    assert (is_sixteen, kept) == (True, True), kernels
    monkeypatch.setenv(SWITCH, "0")
    seventeen, kernels = cuda_kernels_of(lambda: op(*args))
    assert strips(kernels) == (False, True, True), kernels
    assert_gradients_bitwise(sixteen, seventeen, reference)


@requires_cuda
@pytest.mark.parametrize("positions,dtype", [("f=0.875", torch.bfloat16), ("f=0.125", torch.float16)])
@pytest.mark.parametrize("batch,seqlen", [(1, 1024), (2, 3037)])
@pytest.mark.parametrize("heads,heads_kv", [(4, 4), (8, 2), (3, 1)])
def test_cuda_sixteen_row_strips_are_bitwise_seventeen(monkeypatch, positions, dtype, batch, seqlen, heads,
                                                       heads_kv):
    """Whole and ragged last key tiles (the block's last warp hands its share
    to the next tile), one sequence and two, MHA and GQA, bf16 and fp16, a
    whole position among the fractional ones, with a gradient of lse."""
    offsets = torch.tensor(POSITIONS[positions], device="cuda")
    args, reference = dense_backward_case(batch, seqlen, heads, heads_kv, 64, dtype, offsets, WINDOW)
    assert_sixteen_rows_bitwise(monkeypatch, torch.ops.fibsparse.bwd, args, reference)


@requires_cuda
def test_cuda_sixteen_row_strips_per_head_padded_positions(monkeypatch):
    """A row of positions per head, padded to different lengths, one row all
    padding, 20 positions in the longest (past a round of 16)."""
    offsets = per_head_padded_positions()
    args, reference = dense_backward_case(1, 3037, 4, 2, 64, torch.bfloat16, offsets, WINDOW)
    assert_sixteen_rows_bitwise(monkeypatch, torch.ops.fibsparse.bwd, args, reference)


@requires_cuda
def test_cuda_packed_sixteen_row_strips(monkeypatch):
    """A packed batch of nine sequences (0, 1, 63, 64, 65, 128, 129, 300
    and 700 keys), fp16, at Fibonacci positions 0.375 past their distances,
    the farthest several key tiles back."""
    args, reference = packed_fractional_case(64, WINDOW)
    assert_sixteen_rows_bitwise(monkeypatch, torch.ops.fibsparse.varlen_bwd, args, reference)


@requires_cuda
@pytest.mark.parametrize("switch", ["FIBSPARSE_DKDV_FRACTIONAL_KEPT_ROWS", "FIBSPARSE_DKDV_NEXT_WARP_SHARE"])
def test_cuda_sixteen_row_strips_need_the_kept_rows_and_shares(monkeypatch, switch):
    """Without the kept addresses, or without the next warp's shares (each
    warp then forms its own row 16, which needs row 16 staged), the pass
    stages 17 rows, this switch unset; at head_dim 128 it stages 17 rows with
    everything else as at 64."""
    offsets = torch.tensor(POSITIONS["f=0.875"], device="cuda")
    unset(monkeypatch)
    _, kernels = cuda_kernels_of(backward_call(offsets, 64, window=WINDOW))
    if not strips(kernels)[2]:
        pytest.skip("three dk/dv blocks with their v rows do not fit an SM")
    assert strips(kernels) == (True, True, True), kernels
    monkeypatch.setenv(switch, "0")
    _, kernels = cuda_kernels_of(backward_call(offsets, 64, window=WINDOW))
    assert strips(kernels)[:2] == (False, False), kernels
    monkeypatch.delenv(switch)
    _, kernels = cuda_kernels_of(backward_call(offsets, 128, window=WINDOW))
    if strips(kernels)[2]:
        assert strips(kernels) == (False, True, True), kernels


@requires_cuda
@pytest.mark.parametrize("fractional", [True, False])
@pytest.mark.parametrize("setting", ["off", "2"])
def test_cuda_sixteen_row_strips_switch_is_checked(monkeypatch, setting, fractional):
    """The switch takes 0 or 1: any other value is refused, naming the
    variable, what it got and what it takes, before any kernel of the call
    runs, with integer offsets too."""
    offsets = fibonacci_offsets(128, 300, fractional)
    assert_refused_before_any_kernel(monkeypatch, SWITCH, setting, backward_call(offsets, 64))
