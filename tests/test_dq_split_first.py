"""The fractional dq pass takes each step's split from its copies' issue. In
the backward with stored dS, at head_dim 64, the dq pass with the
two-diagonal product and its partials summed first takes each offset step's
whole part and f from the step that queued its copies (which split the
position for their validity) rather than splitting it again after the step's
barrier; FIBSPARSE_DQ_SPLIT_FIRST=0 splits it again. The split, the products
and the order of every sum are the same, so dq, dk, dv and d offsets are
bitwise equal either way: dense and
packed, MHA and GQA (one, two and four heads a dq block), bf16 and fp16, a
whole position among fractional ones (f == 0 takes one diagonal product),
padded per-head positions (steps whose whole part is negative), every output
poisoned first, and within the float64 reference's contract. At head_dim
128, and without the partials summed first, the switch has nothing to
select; a bad value of it is refused before any kernel runs."""
import pytest
import torch

from utils import (FRACTIONAL_POSITIONS, FRACTIONAL_WINDOW, PACKED_LENGTHS, assert_gradients_bitwise,
                   assert_refused_before_any_kernel, backward_call, cuda_kernels_of, dense_backward_case,
                   fibonacci_offsets, packed_backward_case, per_head_padded_positions, requires_cuda,
                   template_arguments)

SWITCH = "FIBSPARSE_DQ_SPLIT_FIRST"
DQ_KERNEL = "dq_from_dscores_with_offsets_kernel"
# The kernel's switches, which the split first needs as they are by default.
NEEDED = ("FIBSPARSE_DQ_TWO_DIAGONALS", "FIBSPARSE_DQ_POSITION_SUMS_FIRST", "FIBSPARSE_DQ_SWIZZLE",
          "FIBSPARSE_STORED_DSCORES")

WINDOW, POSITIONS = FRACTIONAL_WINDOW, FRACTIONAL_POSITIONS


def dq_pass(kernels):
    """The dq pass's sixth to ninth template arguments: kSwizzledK,
    kTwoDiagonals, kPositionSumsFirst, kSplitFirst."""
    return template_arguments(kernels, DQ_KERNEL)[5:9]


def assert_split_first_bitwise(monkeypatch, op, args, reference, heads_per_block=None):
    """op's gradients with each step's split taken from its copies' issue (the
    default) and split again after the step's barrier (the switch at 0), the
    same two-diagonal pass with its partials summed first otherwise: bitwise
    equal, finite, within the contract of the float64 reference; every output
    poisoned first."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    for switch in (SWITCH, *NEEDED):
        monkeypatch.delenv(switch, raising=False)
    first, kernels = cuda_kernels_of(lambda: op(*args))
    assert dq_pass(kernels) == ["false", "true", "true", "true"], kernels
    if heads_per_block is not None:
        assert template_arguments(kernels, DQ_KERNEL)[3] == str(heads_per_block), kernels
    monkeypatch.setenv(SWITCH, "0")
    again, kernels = cuda_kernels_of(lambda: op(*args))
    assert dq_pass(kernels) == ["false", "true", "true", "false"], kernels
    assert_gradients_bitwise(first, again, reference)


@requires_cuda
@pytest.mark.parametrize("positions,dtype", [("f=0.875", torch.bfloat16), ("f=0.125", torch.float16)])
@pytest.mark.parametrize("batch,seqlen", [(1, 1024), (2, 3037)])
@pytest.mark.parametrize("heads,heads_kv", [(4, 4), (8, 2), (4, 2), (3, 1)])
def test_cuda_split_first_is_bitwise_split_again(monkeypatch, positions, dtype, batch, seqlen, heads, heads_kv):
    """Whole and ragged last tiles, one sequence and two, one whole position
    among fractional ones, bf16 and fp16; one, two and four heads a dq block;
    head_dim 64."""
    offsets = torch.tensor(POSITIONS[positions], device="cuda")
    args, reference = dense_backward_case(batch, seqlen, heads, heads_kv, 64, dtype, offsets, WINDOW)
    group = heads // heads_kv
    expected = next(n for n in (4, 2, 1) if group % n == 0)
    assert_split_first_bitwise(monkeypatch, torch.ops.fibsparse.bwd, args, reference, expected)


@requires_cuda
def test_cuda_split_first_with_per_head_padded_positions(monkeypatch):
    """Per-head positions (one head a block, each its own row of offsets; GQA
    4/2): 20 in the first head's row, the farthest beyond the reach of the
    first blocks, a whole position among them; padding after 17 and 2
    positions in two rows, and a row of padding alone; fp16."""
    offsets = per_head_padded_positions()
    args, reference = dense_backward_case(1, 3037, 4, 2, 64, torch.float16, offsets, WINDOW)
    assert_split_first_bitwise(monkeypatch, torch.ops.fibsparse.bwd, args, reference, 1)


@requires_cuda
@pytest.mark.parametrize("heads,heads_kv", [(8, 8), (8, 2)])
def test_cuda_packed_split_first(monkeypatch, heads, heads_kv):
    """A packed batch of nine sequences (0, 1, 63, 64, 65, 128, 129, 300 and
    700 keys), fp16, at Fibonacci positions 0.375 past their distances, the
    farthest several key tiles back; MHA and GQA."""
    offsets = fibonacci_offsets(WINDOW, max(PACKED_LENGTHS), fractional=True)
    args, reference = packed_backward_case(PACKED_LENGTHS, heads, heads_kv, 64, torch.float16, offsets, WINDOW)
    assert_split_first_bitwise(monkeypatch, torch.ops.fibsparse.varlen_bwd, args, reference)


@requires_cuda
@pytest.mark.parametrize("setting", ["0", "1"])
def test_cuda_head_dim_128_splits_after_the_barrier(monkeypatch, setting):
    """At head_dim 128 the pass launches the step that splits again whatever
    the switch says: the old step stays there as the A/B's control."""
    offsets = torch.tensor(POSITIONS["f=0.875"], device="cuda")
    for switch in NEEDED:
        monkeypatch.delenv(switch, raising=False)
    monkeypatch.setenv(SWITCH, setting)
    _, kernels = cuda_kernels_of(backward_call(offsets, 128, window=WINDOW))
    assert dq_pass(kernels) == ["false", "true", "true", "false"], kernels


@requires_cuda
def test_cuda_per_step_sums_split_after_the_barrier(monkeypatch):
    """With FIBSPARSE_DQ_POSITION_SUMS_FIRST=0 the pass launches its step that
    stages and sums the terms, this switch unset: the split first is compiled
    with the sums first alone."""
    offsets = torch.tensor(POSITIONS["f=0.875"], device="cuda")
    for switch in (SWITCH, *NEEDED):
        monkeypatch.delenv(switch, raising=False)
    monkeypatch.setenv("FIBSPARSE_DQ_POSITION_SUMS_FIRST", "0")
    _, kernels = cuda_kernels_of(backward_call(offsets, 64, window=WINDOW))
    assert dq_pass(kernels) == ["false", "true", "false", "false"], kernels


@requires_cuda
@pytest.mark.parametrize("head_dim,fractional", [(64, True), (128, True), (64, False)])
@pytest.mark.parametrize("setting", ["off", "2"])
def test_cuda_split_first_switch_is_checked(monkeypatch, setting, head_dim, fractional):
    """The switch takes 0 or 1: any other value is refused, naming the
    variable, what it got and what it takes, before any kernel of the call
    runs: where it selects (head_dim 64, fractional), at head_dim 128 and
    with integer offsets too."""
    offsets = fibonacci_offsets(128, 300, fractional)
    assert_refused_before_any_kernel(monkeypatch, SWITCH, setting, backward_call(offsets, head_dim))
