"""The fractional dq pass at head_dim 64 forms once what its offset steps
need of the lane and of the offset. With its other forms on (the two-diagonal
product, the position sums first, the offset read ahead, row 16 in
registers), an offset step takes its fraction from the queue rather than
split its position again, builds its two-diagonal A fragment by byte
selectors the lane formed before the steps, and loads row 16 at a distance,
also formed before the steps, from its strip copy's source;
FIBSPARSE_DQ_QUEUED_FRACTION=0 forms each of them at every step. The same
values reach the same products and sums, so dq, dk, dv and d offsets are
bitwise equal either way: dense and packed, MHA and GQA (one, two and four
heads a dq block, the one-head pass on swizzled stages), bf16 and fp16, one
whole position among fractional ones, per-head rows with padding, every
output poisoned first, and within the float64 reference's contract. At
head_dim 128 and with integer offsets the switch has nothing to select; a bad
value of it is refused before any kernel runs."""
import pytest
import torch

from utils import (FRACTIONAL_POSITIONS, FRACTIONAL_WINDOW, PACKED_LENGTHS, assert_gradients_bitwise,
                   assert_refused_before_any_kernel, backward_call, cuda_kernels_of, dense_backward_case,
                   dq_heads_per_block, fibonacci_offsets, packed_backward_case, per_head_padded_positions,
                   requires_cuda, template_arguments)

SWITCH = "FIBSPARSE_DQ_QUEUED_FRACTION"
DQ_KERNEL = "dq_from_dscores_with_offsets_kernel"
# The pass's switches, which the queued fraction needs as they are by default.
NEEDED = ("FIBSPARSE_DQ_TWO_DIAGONALS", "FIBSPARSE_DQ_POSITION_SUMS_FIRST", "FIBSPARSE_DQ_SWIZZLE",
          "FIBSPARSE_DQ_OFFSET_AHEAD", "FIBSPARSE_DQ_ROW16_IN_REGISTERS", "FIBSPARSE_STORED_DSCORES")

WINDOW, POSITIONS = FRACTIONAL_WINDOW, FRACTIONAL_POSITIONS


def queued_fraction(kernels):
    """The dq pass's kQueuedFraction (its eleventh template argument), "false"
    where the kernel has none."""
    arguments = template_arguments(kernels, DQ_KERNEL)
    return arguments[10] if len(arguments) > 10 else "false"


def assert_queued_fraction_bitwise(monkeypatch, op, args, reference, heads_per_block=None):
    """op's gradients with the fraction queued (the default) and each step's
    work formed in the step (the switch at 0), the same pass otherwise: bitwise
    equal, finite, within the float64 reference's contract; every output
    poisoned first."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    for switch in (SWITCH, *NEEDED):
        monkeypatch.delenv(switch, raising=False)
    queued, kernels = cuda_kernels_of(lambda: op(*args))
    assert queued_fraction(kernels) == "true", kernels
    first_pass = template_arguments(kernels, DQ_KERNEL)[:10]
    if heads_per_block is not None:
        assert first_pass[3] == str(heads_per_block), kernels
    monkeypatch.setenv(SWITCH, "0")
    formed, kernels = cuda_kernels_of(lambda: op(*args))
    assert queued_fraction(kernels) == "false", kernels
    assert template_arguments(kernels, DQ_KERNEL)[:10] == first_pass, kernels
    assert_gradients_bitwise(queued, formed, reference)


@requires_cuda
@pytest.mark.parametrize("positions,dtype", [("f=0.875", torch.bfloat16), ("f=0.125", torch.float16)])
@pytest.mark.parametrize("batch,seqlen", [(1, 1024), (2, 3037)])
@pytest.mark.parametrize("heads,heads_kv", [(4, 4), (8, 2), (4, 2), (3, 1)])
def test_cuda_queued_fraction_is_bitwise(monkeypatch, positions, dtype, batch, seqlen, heads, heads_kv):
    """Whole and ragged last tiles, one sequence and two, one whole position
    among fractional ones, bf16 and fp16; one, two and four heads a dq block."""
    offsets = torch.tensor(POSITIONS[positions], device="cuda")
    args, reference = dense_backward_case(batch, seqlen, heads, heads_kv, 64, dtype, offsets, WINDOW)
    assert_queued_fraction_bitwise(monkeypatch, torch.ops.fibsparse.bwd, args, reference,
                                   dq_heads_per_block(heads, heads_kv, 64))


@requires_cuda
@pytest.mark.parametrize("heads,heads_kv", [(4, 4), (8, 2)])
def test_cuda_queued_fraction_with_positions_inside_the_window(monkeypatch, heads, heads_kv):
    """Positions below 1 and inside the window, whose whole parts are below
    16 (row 16's key then lies past a ragged sequence's last key for its
    last blocks), with farther ones after them; bf16; one and four heads a
    dq block."""
    offsets = torch.tensor([0.5, 3.25, 9.0, 15.875, 29.125, 200.375], device="cuda")
    args, reference = dense_backward_case(1, 3037, heads, heads_kv, 64, torch.bfloat16, offsets, WINDOW)
    assert_queued_fraction_bitwise(monkeypatch, torch.ops.fibsparse.bwd, args, reference,
                                   dq_heads_per_block(heads, heads_kv, 64))


@requires_cuda
def test_cuda_queued_fraction_with_per_head_padded_positions(monkeypatch):
    """Per-head rows (one head a block, each its own row of positions; GQA
    4/2): 20 in the first head's row, the farthest beyond the reach of the
    first blocks; padding after 17 and 2 in two rows, and a row of padding
    alone (no offset step); fp16."""
    args, reference = dense_backward_case(1, 3037, 4, 2, 64, torch.float16, per_head_padded_positions(), WINDOW)
    assert_queued_fraction_bitwise(monkeypatch, torch.ops.fibsparse.bwd, args, reference, 1)


@requires_cuda
@pytest.mark.parametrize("heads,heads_kv", [(8, 8), (8, 2)])
def test_cuda_packed_queued_fraction(monkeypatch, heads, heads_kv):
    """A packed batch of nine sequences (0, 1, 63, 64, 65, 128, 129, 300 and
    700 keys), fp16, at Fibonacci positions 0.375 past their distances, the
    farthest several key tiles back; MHA and GQA."""
    offsets = fibonacci_offsets(WINDOW, max(PACKED_LENGTHS), fractional=True)
    args, reference = packed_backward_case(PACKED_LENGTHS, heads, heads_kv, 64, torch.float16, offsets, WINDOW)
    assert_queued_fraction_bitwise(monkeypatch, torch.ops.fibsparse.varlen_bwd, args, reference)


@requires_cuda
@pytest.mark.parametrize("setting", ["0", "1"])
@pytest.mark.parametrize("head_dim,fractional", [(128, True), (64, False)])
def test_cuda_queued_fraction_selects_nothing_elsewhere(monkeypatch, setting, head_dim, fractional):
    """At head_dim 128, and with integer offsets at 64, the pass is the same
    whatever the switch says (the A/B's controls)."""
    offsets = (torch.tensor(POSITIONS["f=0.875"], device="cuda") if fractional
               else fibonacci_offsets(128, 300))
    for switch in NEEDED:
        monkeypatch.delenv(switch, raising=False)
    monkeypatch.setenv(SWITCH, setting)
    _, kernels = cuda_kernels_of(backward_call(offsets, head_dim, window=WINDOW if fractional else 128))
    assert queued_fraction(kernels) == "false", kernels


@requires_cuda
@pytest.mark.parametrize("head_dim,fractional", [(64, True), (64, False), (128, True)])
@pytest.mark.parametrize("setting", ["off", "2"])
def test_cuda_queued_fraction_switch_is_checked(monkeypatch, setting, head_dim, fractional):
    """The switch takes 0 or 1: any other value is refused, naming the
    variable, what it got and what it takes, before any kernel of the call
    runs, where it selects and where it does not."""
    offsets = fibonacci_offsets(128, 300, fractional)
    assert_refused_before_any_kernel(monkeypatch, SWITCH, setting, backward_call(offsets, head_dim))
