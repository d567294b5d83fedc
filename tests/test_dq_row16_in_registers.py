"""The fractional dq pass loads its strips' row 16 into registers. In the
backward with stored dS at head_dim 64, the fractional dq pass (the
two-diagonal product, the partials summed first, each offset read one issue
ahead) stages 16 rows of a warp's strip for a fractional position and loads
each lane's columns of row 16 (query 15's first row, which the two-diagonal
product leaves to a sum of its own) into a register that the step takes an
iteration later; a whole position, whose diagonal product reads rows 1-16,
stages all 17. FIBSPARSE_DQ_ROW16_IN_REGISTERS=0 stages row 16 for every
position. The same values reach the same sums, so dq, dk, dv and d offsets are
bitwise equal either way: dense and packed, MHA and GQA (one, two and four
heads a dq block), bf16 and fp16, a whole position among fractional ones,
per-head rows with padding, every output poisoned first (a row 16 taken from a
register of another step, or from an unstaged row, would move dq of query 15
of a warp), and within the float64 reference's contract. At head_dim 128 the
switch has nothing to select; a bad value of it is refused before any kernel
runs."""
import pytest
import torch

from utils import (FRACTIONAL_POSITIONS, FRACTIONAL_WINDOW, assert_gradients_bitwise,
                   assert_refused_before_any_kernel, backward_call, cuda_kernels_of, dense_backward_case,
                   dq_heads_per_block, fibonacci_offsets, packed_fractional_case, per_head_padded_positions,
                   requires_cuda, template_arguments)

SWITCH = "FIBSPARSE_DQ_ROW16_IN_REGISTERS"
DQ_KERNEL = "dq_from_dscores_with_offsets_kernel"
# The kernel's switches, which row 16 in registers needs as they are by default.
NEEDED = ("FIBSPARSE_DQ_TWO_DIAGONALS", "FIBSPARSE_DQ_POSITION_SUMS_FIRST", "FIBSPARSE_DQ_OFFSET_AHEAD",
          "FIBSPARSE_STORED_DSCORES")

WINDOW, POSITIONS = FRACTIONAL_WINDOW, FRACTIONAL_POSITIONS


def dq_pass(kernels):
    """The dq pass's seventh to tenth template arguments: kTwoDiagonals,
    kPositionSumsFirst, kOffsetAhead and kRow16InRegisters (absent: false)."""
    arguments = template_arguments(kernels, DQ_KERNEL)
    return arguments[6:9] + [arguments[9] if len(arguments) > 9 else "false"]


def unset(monkeypatch):
    for switch in (SWITCH, *NEEDED):
        monkeypatch.delenv(switch, raising=False)


def assert_row16_in_registers_bitwise(monkeypatch, op, args, reference, heads_per_block=None):
    """op's gradients with row 16 in registers (the default) and staged (the
    switch at 0), the same pass otherwise: bitwise equal, finite, within the
    contract of the float64 reference; every output poisoned first."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    unset(monkeypatch)
    loaded, kernels = cuda_kernels_of(lambda: op(*args))
    assert dq_pass(kernels) == ["true"] * 4, kernels
    if heads_per_block is not None:
        assert template_arguments(kernels, DQ_KERNEL)[3] == str(heads_per_block), kernels
    monkeypatch.setenv(SWITCH, "0")
    staged, kernels = cuda_kernels_of(lambda: op(*args))
    assert dq_pass(kernels) == ["true"] * 3 + ["false"], kernels
    assert_gradients_bitwise(loaded, staged, reference)


@requires_cuda
@pytest.mark.parametrize("positions,dtype", [("f=0.875", torch.bfloat16), ("f=0.125", torch.float16)])
@pytest.mark.parametrize("batch,seqlen", [(1, 1024), (2, 3037)])
@pytest.mark.parametrize("heads,heads_kv", [(4, 4), (8, 2), (4, 2), (3, 1)])
def test_cuda_row16_in_registers_is_bitwise_staged(monkeypatch, positions, dtype, batch, seqlen, heads, heads_kv):
    """Whole and ragged last tiles, one sequence and two, one whole position
    among fractional ones, bf16 and fp16; one, two and four heads a dq block."""
    offsets = torch.tensor(POSITIONS[positions], device="cuda")
    args, reference = dense_backward_case(batch, seqlen, heads, heads_kv, 64, dtype, offsets, WINDOW)
    assert_row16_in_registers_bitwise(monkeypatch, torch.ops.fibsparse.bwd, args, reference,
                                      dq_heads_per_block(heads, heads_kv, 64))


@requires_cuda
def test_cuda_row16_in_registers_per_head_padded_positions(monkeypatch):
    """A row of positions per head, padded to different lengths, one row all
    padding, 20 positions in the longest (past a round of 16): one head a dq
    block, each with its own row of positions."""
    args, reference = dense_backward_case(1, 3037, 4, 2, 64, torch.float16, per_head_padded_positions(), WINDOW)
    assert_row16_in_registers_bitwise(monkeypatch, torch.ops.fibsparse.bwd, args, reference, 1)


@requires_cuda
def test_cuda_packed_row16_in_registers(monkeypatch):
    """A packed batch of nine sequences (0, 1, 63, 64, 65, 128, 129, 300
    and 700 keys), fp16, at Fibonacci positions 0.375 past their distances:
    strips that end past a sequence's last key. (Where row 16's key lies
    outside its sequence, query 15 reads no key there and its dS is zero, so
    the register's zero fill is not what this compares; memcheck checks the
    load itself.)"""
    args, reference = packed_fractional_case(64, WINDOW)
    assert_row16_in_registers_bitwise(monkeypatch, torch.ops.fibsparse.varlen_bwd, args, reference)


@requires_cuda
def test_cuda_row16_in_registers_at_head_dim_64_alone(monkeypatch):
    """At head_dim 128 the dq pass stages row 16 with the switch unset."""
    offsets = torch.tensor(POSITIONS["f=0.875"], device="cuda")
    unset(monkeypatch)
    _, kernels = cuda_kernels_of(backward_call(offsets, 128, window=WINDOW))
    assert dq_pass(kernels)[3] == "false", kernels


@requires_cuda
@pytest.mark.parametrize("fractional", [True, False])
@pytest.mark.parametrize("setting", ["off", "2"])
def test_cuda_row16_in_registers_switch_is_checked(monkeypatch, setting, fractional):
    """The switch takes 0 or 1: any other value is refused, naming the
    variable, what it got and what it takes, before any kernel of the call
    runs, with integer offsets too."""
    offsets = fibonacci_offsets(128, 300, fractional)
    assert_refused_before_any_kernel(monkeypatch, SWITCH, setting, backward_call(offsets, 64))
