"""The fractional dk/dv pass forms both rows before its stores. In the backward
with stored dS, at head_dim 64, the dk/dv pass's fractional step with kept
addresses loads the lse and delta of both of a lane's rows (g and g + 8)
before its products and forms both rows' P, dS and d(position) terms before
it stores either row's; FIBSPARSE_DKDV_ROWS_BEFORE_STORES=0 loads and forms
each row in its turn, after the previous row's stores. The values, the order
of every sum and the stores are the same, so dq, dk, dv and d offsets are
bitwise equal either way: dense and packed, MHA and GQA, bf16 and fp16, every
output poisoned first (a dS or term left unwritten would be NaN in dq or d
offsets), and within the float64 reference's contract. At head_dim 128 (where
both rows first spilled) and without kept addresses the switch has nothing to
select; a bad value of it is refused before any kernel runs."""
import pytest
import torch

from utils import (FRACTIONAL_POSITIONS, FRACTIONAL_WINDOW, PACKED_LENGTHS, assert_gradients_bitwise,
                   assert_refused_before_any_kernel, backward_call, cuda_kernels_of, dense_backward_case,
                   fibonacci_offsets, packed_backward_case, per_head_padded_positions, requires_cuda,
                   template_arguments)

SWITCH = "FIBSPARSE_DKDV_ROWS_BEFORE_STORES"
# The kernel's switches, which the rows before the stores need as they are by default.
NEEDED = ("FIBSPARSE_DKDV_FRACTIONAL_KEPT_ROWS", "FIBSPARSE_DKDV_TWO_DIAGONALS", "FIBSPARSE_DKDV_NEXT_WARP_SHARE",
          "FIBSPARSE_DKDV_SWIZZLE", "FIBSPARSE_DKDV_V_SMEM")

WINDOW, POSITIONS = FRACTIONAL_WINDOW, FRACTIONAL_POSITIONS


def dkdv_pass(kernels):
    """dkdv_mma_kernel's kKeptFractionalRows and kRowsBeforeStores (its eighth
    and ninth template arguments), and whether its v rows are in shared memory
    on swizzled stages (the fifth and sixth), which both need."""
    arguments = template_arguments(kernels, "dkdv_mma_kernel")
    return arguments[7] == "true", arguments[8] == "true", arguments[4:6] == ["true", "true"]


def assert_rows_before_stores_bitwise(monkeypatch, op, args, reference):
    """op's gradients with both rows formed before the stores (the default)
    and with each row in its turn (the switch at 0), the same kept-address
    step otherwise: bitwise equal, finite, within the contract of the float64
    reference; every output poisoned first."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    for switch in (SWITCH, *NEEDED):
        monkeypatch.delenv(switch, raising=False)
    first, kernels = cuda_kernels_of(lambda: op(*args))
    if not dkdv_pass(kernels)[2]:
        pytest.skip("the dk/dv pass's three blocks with their v rows do not fit an SM")
    assert dkdv_pass(kernels) == (True, True, True), kernels
    monkeypatch.setenv(SWITCH, "0")
    in_turn, kernels = cuda_kernels_of(lambda: op(*args))
    assert dkdv_pass(kernels) == (True, False, True), kernels
    assert_gradients_bitwise(first, in_turn, reference)


@requires_cuda
@pytest.mark.parametrize("positions,dtype", [("f=0.875", torch.bfloat16), ("f=0.125", torch.float16)])
@pytest.mark.parametrize("batch,seqlen", [(1, 1024), (2, 3037)])
@pytest.mark.parametrize("heads,heads_kv", [(4, 4), (8, 2), (3, 1)])
def test_cuda_rows_before_stores_are_bitwise_rows_in_turn(monkeypatch, positions, dtype, batch, seqlen, heads,
                                                          heads_kv):
    """Whole and ragged last key tiles (rows past the sequence's end store
    nothing), one sequence and two, MHA and GQA (a block's steps move from one
    query head to the next), bf16 and fp16, with a gradient of lse; head_dim 64."""
    offsets = torch.tensor(POSITIONS[positions], device="cuda")
    args, reference = dense_backward_case(batch, seqlen, heads, heads_kv, 64, dtype, offsets, WINDOW)
    assert_rows_before_stores_bitwise(monkeypatch, torch.ops.fibsparse.bwd, args, reference)


@requires_cuda
def test_cuda_rows_before_stores_with_per_head_padded_positions(monkeypatch):
    """Per-head positions (GQA 4/2), the first row's farthest beyond the reach
    of the first blocks, a whole position among them, padding after 17 and 2
    positions in two rows and a row of padding alone (offset steps whose
    whole part is negative form no rows); fp16."""
    offsets = per_head_padded_positions()
    args, reference = dense_backward_case(1, 3037, 4, 2, 64, torch.float16, offsets, WINDOW)
    assert_rows_before_stores_bitwise(monkeypatch, torch.ops.fibsparse.bwd, args, reference)


@requires_cuda
@pytest.mark.parametrize("heads,heads_kv", [(8, 8), (8, 2)])
def test_cuda_packed_rows_before_stores(monkeypatch, heads, heads_kv):
    """A packed batch of nine sequences (0, 1, 63, 64, 65, 128, 129, 300
    and 700 keys), fp16, at Fibonacci positions 0.375 past their distances,
    the farthest several key tiles back; MHA and GQA."""
    offsets = fibonacci_offsets(WINDOW, max(PACKED_LENGTHS), fractional=True)
    args, reference = packed_backward_case(PACKED_LENGTHS, heads, heads_kv, 64, torch.float16, offsets, WINDOW)
    assert_rows_before_stores_bitwise(monkeypatch, torch.ops.fibsparse.varlen_bwd, args, reference)


@requires_cuda
@pytest.mark.parametrize("setting", ["0", "1"])
def test_cuda_head_dim_128_keeps_the_rows_in_turn(monkeypatch, setting):
    """At head_dim 128 the pass launches its kept-address step with the rows
    in turn whatever the switch says: both rows first spilled there."""
    offsets = torch.tensor(POSITIONS["f=0.875"], device="cuda")
    for switch in NEEDED:
        monkeypatch.delenv(switch, raising=False)
    monkeypatch.setenv(SWITCH, setting)
    _, kernels = cuda_kernels_of(backward_call(offsets, 128, window=WINDOW))
    kept, before_stores, v_rows_swizzled = dkdv_pass(kernels)
    if not v_rows_swizzled:
        pytest.skip("the dk/dv pass's two blocks with their v rows do not fit an SM")
    assert (kept, before_stores) == (True, False), kernels


@requires_cuda
def test_cuda_without_kept_rows_the_rows_are_in_turn(monkeypatch):
    """With FIBSPARSE_DKDV_FRACTIONAL_KEPT_ROWS=0 the pass launches the step
    that forms its addresses, this switch unset: both rows first are compiled
    with the kept addresses alone."""
    offsets = torch.tensor(POSITIONS["f=0.875"], device="cuda")
    for switch in (SWITCH, *NEEDED):
        monkeypatch.delenv(switch, raising=False)
    call = backward_call(offsets, 64, window=WINDOW)
    _, kernels = cuda_kernels_of(call)
    if not dkdv_pass(kernels)[2]:
        pytest.skip("the dk/dv pass's three blocks with their v rows do not fit an SM")
    assert dkdv_pass(kernels) == (True, True, True), kernels
    monkeypatch.setenv("FIBSPARSE_DKDV_FRACTIONAL_KEPT_ROWS", "0")
    _, kernels = cuda_kernels_of(call)
    assert dkdv_pass(kernels) == (False, False, True), kernels


@requires_cuda
@pytest.mark.parametrize("head_dim,fractional", [(64, True), (128, True), (128, False)])
@pytest.mark.parametrize("setting", ["off", "2"])
def test_cuda_rows_before_stores_switch_is_checked(monkeypatch, setting, head_dim, fractional):
    """The switch takes 0 or 1: any other value is refused, naming the
    variable, what it got and what it takes, before any kernel of the call
    runs: where it selects (head_dim 64, fractional), at head_dim 128 and
    with integer offsets too."""
    offsets = fibonacci_offsets(128, 300, fractional)
    assert_refused_before_any_kernel(monkeypatch, SWITCH, setting, backward_call(offsets, head_dim))
