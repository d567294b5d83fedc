"""The fractional dk/dv pass keeps its shared-memory addresses. In the backward
with stored dS, at head_dim 64 and 128, the dk/dv pass's fractional step on
swizzled stages (with the two-diagonal product and the next warp's shares)
reads its strip's rows, row 0's columns, its rows' lse and delta and the edge
row of key -1 from addresses formed once per block, and its v rows'
fragments likewise; FIBSPARSE_DKDV_FRACTIONAL_KEPT_ROWS=0 forms them at every
step. The reads, products and sums are the same, so dq, dk, dv and d offsets
are bitwise equal either way, dense and packed, MHA and GQA, every output
poisoned first, and within the float64 reference's contract. Without the
next warp's shares the pass launches the step that forms its addresses; a
bad value of the switch is refused before any kernel runs."""
import pytest
import torch

from utils import (FRACTIONAL_POSITIONS, FRACTIONAL_WINDOW, assert_gradients_bitwise,
                   assert_refused_before_any_kernel, backward_call, cuda_kernels_of, dense_backward_case,
                   fibonacci_offsets, packed_fractional_case, requires_cuda, template_arguments)

SWITCH = "FIBSPARSE_DKDV_FRACTIONAL_KEPT_ROWS"
# The kernel's switches, which its kept rows need as they are by default.
NEEDED = ("FIBSPARSE_DKDV_TWO_DIAGONALS", "FIBSPARSE_DKDV_NEXT_WARP_SHARE", "FIBSPARSE_DKDV_SWIZZLE",
          "FIBSPARSE_DKDV_V_SMEM")

WINDOW, POSITIONS = FRACTIONAL_WINDOW, FRACTIONAL_POSITIONS


def kept_rows(kernels):
    """dkdv_mma_kernel's eighth template argument, kKeptFractionalRows, and
    whether its v rows are in shared memory on swizzled stages (the fifth and
    sixth), which the kept rows need."""
    arguments = template_arguments(kernels, "dkdv_mma_kernel")
    return arguments[7] == "true", arguments[4:6] == ["true", "true"]


def assert_kept_rows_bitwise(monkeypatch, op, args, reference):
    """op's gradients with the kept addresses (the default) and with the
    switch's addresses formed per step: bitwise equal, finite, within the
    contract of the float64 reference; every output poisoned first."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    for switch in (SWITCH, *NEEDED):
        monkeypatch.delenv(switch, raising=False)
    kept, kernels = cuda_kernels_of(lambda: op(*args))
    is_kept, v_rows_swizzled = kept_rows(kernels)
    if not v_rows_swizzled:
        pytest.skip("the dk/dv pass's blocks with their v rows (two at head_dim 128, three at 64) do not fit an SM")
    assert is_kept, kernels
    monkeypatch.setenv(SWITCH, "0")
    formed, kernels = cuda_kernels_of(lambda: op(*args))
    assert kept_rows(kernels) == (False, True), kernels
    assert_gradients_bitwise(kept, formed, reference)


@requires_cuda
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("positions,dtype", [("f=0.875", torch.bfloat16), ("f=0.125", torch.float16)])
@pytest.mark.parametrize("batch,seqlen", [(1, 1024), (2, 3037)])
@pytest.mark.parametrize("heads,heads_kv", [(4, 4), (8, 2), (3, 1)])
def test_cuda_kept_rows_are_bitwise_formed_rows(monkeypatch, positions, dtype, batch, seqlen, heads, heads_kv,
                                                head_dim):
    """Whole and ragged last key tiles (the block's last warp hands its share
    to the next tile), one sequence and two, MHA and GQA, bf16 and fp16, with
    a gradient of lse."""
    offsets = torch.tensor(POSITIONS[positions], device="cuda")
    args, reference = dense_backward_case(batch, seqlen, heads, heads_kv, head_dim, dtype, offsets, WINDOW)
    assert_kept_rows_bitwise(monkeypatch, torch.ops.fibsparse.bwd, args, reference)


@requires_cuda
@pytest.mark.parametrize("head_dim", [64, 128])
def test_cuda_packed_kept_rows(monkeypatch, head_dim):
    """A packed batch of nine sequences (0, 1, 63, 64, 65, 128, 129, 300
    and 700 keys), fp16, at Fibonacci positions 0.375 past their distances,
    the farthest several key tiles back."""
    args, reference = packed_fractional_case(head_dim, WINDOW)
    assert_kept_rows_bitwise(monkeypatch, torch.ops.fibsparse.varlen_bwd, args, reference)


@requires_cuda
@pytest.mark.parametrize("head_dim", [64, 128])
def test_cuda_without_the_next_warps_shares_the_step_forms_its_rows(monkeypatch, head_dim):
    """With FIBSPARSE_DKDV_NEXT_WARP_SHARE=0 (each warp forms its own row 16)
    the pass launches the step that forms its addresses, the kept rows'
    switch unset: the kept step is compiled for the shares alone."""
    offsets = torch.tensor(POSITIONS["f=0.875"], device="cuda")
    for switch in (SWITCH, *NEEDED):
        monkeypatch.delenv(switch, raising=False)
    call = backward_call(offsets, head_dim, window=WINDOW)
    _, kernels = cuda_kernels_of(call)
    if not kept_rows(kernels)[1]:
        pytest.skip("the dk/dv pass's blocks with their v rows do not fit an SM")
    assert kept_rows(kernels) == (True, True), kernels
    monkeypatch.setenv("FIBSPARSE_DKDV_NEXT_WARP_SHARE", "0")
    _, kernels = cuda_kernels_of(call)
    assert kept_rows(kernels) == (False, True), kernels


@requires_cuda
@pytest.mark.parametrize("fractional", [True, False])
@pytest.mark.parametrize("setting", ["off", "2"])
def test_cuda_kept_rows_switch_is_checked(monkeypatch, setting, fractional):
    """The switch takes 0 or 1: any other value is refused, naming the
    variable, what it got and what it takes, before any kernel of the call
    runs, with integer offsets too."""
    offsets = fibonacci_offsets(128, 300, fractional)
    assert_refused_before_any_kernel(monkeypatch, SWITCH, setting, backward_call(offsets, 128))
