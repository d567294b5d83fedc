"""The fractional dq pass sums its partials of d loss / d position before its
steps. In the backward with stored dS, at head_dim 64 and 128, the dq pass
with the two-diagonal product reads the d(position) terms the dk/dv pass
stored straight from memory, once, and stores each warp's partial for every
offset within its block's reach before its first step (the steps neither
stage nor sum them); FIBSPARSE_DQ_POSITION_SUMS_FIRST=0 stages and sums them
at every offset step. The terms, their zeros (queries that read no key) and
the order of the sum are the same, so dq, dk, dv and d offsets are bitwise
equal either way: dense and packed, MHA and GQA (one, two and four heads a dq
block), whole and fractional positions, per-head positions with padding and
more than one round of 16 offsets, every output poisoned first (a partial
left unwritten would be NaN in d offsets), and within the float64
reference's contract. A bad value of the switch is refused before any
kernel runs."""
import pytest
import torch

from utils import (FRACTIONAL_POSITIONS, FRACTIONAL_WINDOW, assert_gradients_bitwise,
                   assert_refused_before_any_kernel, backward_call, cuda_kernels_of, dense_backward_case,
                   dq_heads_per_block, fibonacci_offsets, packed_fractional_case, per_head_padded_positions,
                   requires_cuda, template_arguments)

SWITCH = "FIBSPARSE_DQ_POSITION_SUMS_FIRST"
DQ_KERNEL = "dq_from_dscores_with_offsets_kernel"

WINDOW, POSITIONS = FRACTIONAL_WINDOW, FRACTIONAL_POSITIONS


def dq_pass(kernels):
    """The dq pass's sixth to eighth template arguments: kSwizzledK,
    kTwoDiagonals, kPositionSumsFirst."""
    return template_arguments(kernels, DQ_KERNEL)[5:8]


def assert_sums_first_bitwise(monkeypatch, op, args, reference, heads_per_block=None):
    """op's gradients with the partials summed before the steps (the default)
    and at every step (the switch at 0), the same two-diagonal pass on padded
    k rows otherwise: bitwise equal, finite, within the contract of the
    float64 reference; every output poisoned first."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    for switch in (SWITCH, "FIBSPARSE_DQ_TWO_DIAGONALS", "FIBSPARSE_DQ_SWIZZLE", "FIBSPARSE_STORED_DSCORES"):
        monkeypatch.delenv(switch, raising=False)
    first, kernels = cuda_kernels_of(lambda: op(*args))
    # At head_dim 64 with one head a block the pass with its sums first takes
    # swizzled k rows (its strips of 16 rows, row 16 in registers); padded
    # ones with more heads a block, and at 128.
    swizzled = args[1].shape[-1] == 64 and template_arguments(kernels, DQ_KERNEL)[3] == "1"
    assert dq_pass(kernels) == ["true" if swizzled else "false", "true", "true"], kernels
    if heads_per_block is not None:
        assert template_arguments(kernels, DQ_KERNEL)[3] == str(heads_per_block), kernels
    monkeypatch.setenv(SWITCH, "0")
    per_step, kernels = cuda_kernels_of(lambda: op(*args))
    assert dq_pass(kernels) == ["false", "true", "false"], kernels
    assert_gradients_bitwise(first, per_step, reference)


@requires_cuda
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("positions", list(POSITIONS))
@pytest.mark.parametrize("batch,seqlen", [(1, 1024), (2, 3037)])
@pytest.mark.parametrize("heads,heads_kv", [(4, 4), (8, 2), (4, 2), (3, 1)])
def test_cuda_sums_first_are_the_steps_sums(monkeypatch, positions, batch, seqlen, heads, heads_kv, head_dim):
    """Whole and ragged last tiles (warps whose first query is past the
    sequence store no partial), one sequence and two, one whole position
    among fractional ones; one, two and (at head_dim 64) four heads a dq
    block."""
    offsets = torch.tensor(POSITIONS[positions], device="cuda")
    args, reference = dense_backward_case(batch, seqlen, heads, heads_kv, head_dim, torch.bfloat16, offsets, WINDOW)
    assert_sums_first_bitwise(monkeypatch, torch.ops.fibsparse.bwd, args, reference,
                              dq_heads_per_block(heads, heads_kv, head_dim))


@requires_cuda
@pytest.mark.parametrize("head_dim", [64, 128])
def test_cuda_sums_first_with_per_head_padded_positions(monkeypatch, head_dim):
    """Per-head positions (one head a block, each its own row of offsets; GQA
    4/2): 20 in the first head's row, more than a round of 16, the farthest
    beyond the reach of the first blocks; 17 and 2 before padding in two rows,
    and a row of padding alone; fp16."""
    offsets = per_head_padded_positions()
    args, reference = dense_backward_case(1, 3037, 4, 2, head_dim, torch.float16, offsets, WINDOW)
    assert_sums_first_bitwise(monkeypatch, torch.ops.fibsparse.bwd, args, reference, 1)


@requires_cuda
@pytest.mark.parametrize("head_dim", [64, 128])
def test_cuda_packed_sums_first(monkeypatch, head_dim):
    """A packed batch of nine sequences (0, 1, 63, 64, 65, 128, 129, 300 and
    700 keys), fp16, at Fibonacci positions 0.375 past their distances, the
    farthest several key tiles back."""
    args, reference = packed_fractional_case(head_dim, WINDOW)
    assert_sums_first_bitwise(monkeypatch, torch.ops.fibsparse.varlen_bwd, args, reference)


@requires_cuda
@pytest.mark.parametrize("head_dim", [64, 128])
def test_cuda_two_products_sum_at_every_step(monkeypatch, head_dim):
    """With FIBSPARSE_DQ_TWO_DIAGONALS=0 the pass launches its two-product
    kernel, which sums at every step, whatever this switch says: the sums
    before the steps are compiled with the two-diagonal product alone."""
    offsets = torch.tensor(POSITIONS["f=0.875"], device="cuda")
    monkeypatch.delenv(SWITCH, raising=False)
    monkeypatch.setenv("FIBSPARSE_DQ_TWO_DIAGONALS", "0")
    _, kernels = cuda_kernels_of(backward_call(offsets, head_dim, window=WINDOW))
    assert dq_pass(kernels) == ["false", "false", "false"], kernels


@requires_cuda
@pytest.mark.parametrize("fractional", [True, False])
@pytest.mark.parametrize("setting", ["off", "2"])
def test_cuda_position_sums_first_switch_is_checked(monkeypatch, setting, fractional):
    """The switch takes 0 or 1: any other value is refused, naming the
    variable, what it got and what it takes, before any kernel of the call
    runs, with integer offsets too."""
    offsets = fibonacci_offsets(128, 300, fractional)
    assert_refused_before_any_kernel(monkeypatch, SWITCH, setting, backward_call(offsets, 128))
