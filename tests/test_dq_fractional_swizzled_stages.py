"""The fractional dq pass at head_dim 64 on swizzled k stages. With row 16 of
each strip in registers (and the two-diagonal product, the partials summed
first, each offset read one issue ahead), every strip is 16 rows from row
16 w, as the integer pass's: a fractional position's from its first query's
second row, a whole one's from its first row. With one head a dq block its k
stages are swizzled as the integer pass's; FIBSPARSE_DQ_SWIZZLE=0 gives it
padded rows (the strips of 16 rows kept) and FIBSPARSE_DQ_ROW16_IN_REGISTERS=0
the padded pass with 17-row strips; with two or four heads a block it keeps
padded rows. The same rows reach the same products, so dq, dk, dv and d
offsets are bitwise equal either way: dense and packed, MHA and GQA groups
whose heads take a block each (one head a kv head, three, per-head rows of
positions with padding), bf16 and fp16, a whole position among fractional
ones, every output poisoned first (a strip staged a row off would move dq far
past rounding), and within the float64 reference's contract."""
import pytest
import torch

from utils import (FRACTIONAL_POSITIONS, FRACTIONAL_WINDOW, PACKED_LENGTHS, assert_gradients_bitwise,
                   backward_call, cuda_kernels_of, dense_backward_case, dq_heads_per_block, fibonacci_offsets,
                   packed_backward_case, per_head_padded_positions, requires_cuda, template_arguments)

SWITCH = "FIBSPARSE_DQ_SWIZZLE"
DQ_KERNEL = "dq_from_dscores_with_offsets_kernel"
# The switches of the kernel the swizzled stages need, as they are by default.
NEEDED = ("FIBSPARSE_DQ_ROW16_IN_REGISTERS", "FIBSPARSE_DQ_TWO_DIAGONALS", "FIBSPARSE_DQ_POSITION_SUMS_FIRST",
          "FIBSPARSE_DQ_OFFSET_AHEAD", "FIBSPARSE_STORED_DSCORES")

WINDOW, POSITIONS = FRACTIONAL_WINDOW, FRACTIONAL_POSITIONS


def swizzled_and_row16(kernels):
    """The dq pass's kSwizzledK (its sixth template argument) and
    kRow16InRegisters (its tenth; absent: false)."""
    arguments = template_arguments(kernels, DQ_KERNEL)
    return arguments[5], arguments[9] if len(arguments) > 9 else "false"


def unset(monkeypatch):
    for switch in (SWITCH, *NEEDED):
        monkeypatch.delenv(switch, raising=False)


def assert_swizzled_bitwise(monkeypatch, op, args, reference):
    """op's gradients on swizzled k stages (the default, one head a dq
    block) and on padded ones (the switch at 0), both with 16-row strips:
    bitwise equal, finite, within the contract of the float64 reference;
    every output poisoned first."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    unset(monkeypatch)
    swizzled, kernels = cuda_kernels_of(lambda: op(*args))
    assert swizzled_and_row16(kernels) == ("true", "true"), kernels
    assert template_arguments(kernels, DQ_KERNEL)[3] == "1", kernels
    monkeypatch.setenv(SWITCH, "0")
    padded, kernels = cuda_kernels_of(lambda: op(*args))
    assert swizzled_and_row16(kernels) == ("false", "true"), kernels
    assert_gradients_bitwise(swizzled, padded, reference)


@requires_cuda
@pytest.mark.parametrize("positions,dtype", [("f=0.875", torch.bfloat16), ("f=0.125", torch.float16)])
@pytest.mark.parametrize("batch,seqlen", [(1, 1024), (2, 3037)])
@pytest.mark.parametrize("heads,heads_kv", [(4, 4), (3, 1)])
def test_cuda_fractional_swizzled_k_rows_are_bitwise_padded(monkeypatch, positions, dtype, batch, seqlen, heads,
                                                            heads_kv):
    """Whole and ragged last tiles, one sequence and two, one whole position
    among fractional ones, bf16 and fp16; MHA, and a group of three heads
    (one head a dq block either way)."""
    offsets = torch.tensor(POSITIONS[positions], device="cuda")
    args, reference = dense_backward_case(batch, seqlen, heads, heads_kv, 64, dtype, offsets, WINDOW)
    assert_swizzled_bitwise(monkeypatch, torch.ops.fibsparse.bwd, args, reference)


@requires_cuda
@pytest.mark.parametrize("heads,heads_kv", [(8, 2), (4, 2)])
def test_cuda_fractional_dq_blocks_of_several_heads_keep_padded_k_rows(monkeypatch, heads, heads_kv):
    """Four and two heads a dq block: padded k rows, with row 16 in
    registers."""
    offsets = torch.tensor(POSITIONS["f=0.875"], device="cuda")
    args, _ = dense_backward_case(1, 1024, heads, heads_kv, 64, torch.bfloat16, offsets, WINDOW)
    unset(monkeypatch)
    _, kernels = cuda_kernels_of(lambda: torch.ops.fibsparse.bwd(*args))
    assert swizzled_and_row16(kernels) == ("false", "true"), kernels
    assert template_arguments(kernels, DQ_KERNEL)[3] == str(dq_heads_per_block(heads, heads_kv, 64)), kernels


@requires_cuda
def test_cuda_fractional_swizzled_k_rows_per_head_padded_positions(monkeypatch):
    """A row of positions per head, padded to different lengths, one row all
    padding, 20 positions in the longest (past a round of 16)."""
    args, reference = dense_backward_case(1, 3037, 4, 2, 64, torch.bfloat16, per_head_padded_positions(), WINDOW)
    assert_swizzled_bitwise(monkeypatch, torch.ops.fibsparse.bwd, args, reference)


@requires_cuda
def test_cuda_packed_fractional_swizzled_k_rows(monkeypatch):
    """A packed batch of nine sequences (0, 1, 63, 64, 65, 128, 129, 300
    and 700 keys), four heads, fp16, at Fibonacci positions 0.375 past their
    distances."""
    offsets = fibonacci_offsets(WINDOW, max(PACKED_LENGTHS), fractional=True)
    args, reference = packed_backward_case(PACKED_LENGTHS, 4, 4, 64, torch.float16, offsets, WINDOW)
    assert_swizzled_bitwise(monkeypatch, torch.ops.fibsparse.varlen_bwd, args, reference)


@requires_cuda
def test_cuda_fractional_strips_of_17_rows_keep_padded_k_rows(monkeypatch):
    """With row 16 staged (FIBSPARSE_DQ_ROW16_IN_REGISTERS=0) the strips are
    17 rows from row 17 w and the pass keeps padded k rows, this switch
    unset."""
    offsets = torch.tensor(POSITIONS["f=0.875"], device="cuda")
    unset(monkeypatch)
    monkeypatch.setenv("FIBSPARSE_DQ_ROW16_IN_REGISTERS", "0")
    _, kernels = cuda_kernels_of(backward_call(offsets, 64, window=WINDOW))
    assert swizzled_and_row16(kernels) == ("false", "false"), kernels
