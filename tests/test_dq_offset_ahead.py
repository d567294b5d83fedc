"""The dq pass reads each offset step's offset one issue ahead. In the
backward with stored dS, at head_dim 64, the dq pass (integer offsets on
swizzled stages; fractional positions with the two-diagonal product and the
partials summed first) queues each offset step's copies
with an offset the issue before it loaded, and loads the next one in its turn
(clamped to the last offset within the block's reach, so never past the end
of its row); FIBSPARSE_DQ_OFFSET_AHEAD=0 loads each offset in the issue that
takes it. The same values in the same order reach the same instructions, so
dq, dk, dv and d offsets are bitwise equal either way: dense and packed, MHA
and GQA (one, two and four heads a dq block), bf16 and fp16, integer offsets
and fractional positions (a whole one among them), per-head rows with
padding (rows that end early, one or no offset step within a block's
reach, a row of padding alone), every output poisoned first, and within the float64
reference's contract. At head_dim 128 the switch has nothing to select; a
bad value of it is refused before any kernel runs."""
import pytest
import torch

from utils import (FRACTIONAL_POSITIONS, FRACTIONAL_WINDOW, PACKED_LENGTHS, assert_gradients_bitwise,
                   assert_refused_before_any_kernel, backward_call, cuda_kernels_of, dense_backward_case,
                   dq_heads_per_block, fibonacci_offsets, packed_backward_case, per_head_padded_positions,
                   requires_cuda, template_arguments)

SWITCH = "FIBSPARSE_DQ_OFFSET_AHEAD"
DQ_KERNEL = "dq_from_dscores_with_offsets_kernel"
# The kernel's switches, which the offset ahead needs as they are by default.
NEEDED = ("FIBSPARSE_DQ_TWO_DIAGONALS", "FIBSPARSE_DQ_POSITION_SUMS_FIRST", "FIBSPARSE_DQ_SWIZZLE",
          "FIBSPARSE_DQ_ROW16_IN_REGISTERS", "FIBSPARSE_STORED_DSCORES")

WINDOW, POSITIONS = FRACTIONAL_WINDOW, FRACTIONAL_POSITIONS
# kSwizzledK, kTwoDiagonals, kPositionSumsFirst of each kind of offsets' pass
# at head_dim 64 (the fractional pass's k rows are swizzled only with the
# offset ahead, row 16 in registers and one head a block: fractional_pass).
PASS = {True: ["false", "true", "true"], False: ["true", "false", "false"]}


def fractional_pass(kernels):
    """PASS[True] as the fractional pass with its offset ahead takes it: its
    k rows swizzled with one head a block (kHeads, the fourth argument)."""
    swizzled = template_arguments(kernels, DQ_KERNEL)[3] == "1"
    return ["true" if swizzled else "false"] + PASS[True][1:]


def dq_pass(kernels):
    """The dq pass's sixth to ninth template arguments: kSwizzledK,
    kTwoDiagonals, kPositionSumsFirst, kOffsetAhead."""
    return template_arguments(kernels, DQ_KERNEL)[5:9]


def integer_per_head_offsets():
    """per_head_padded_positions as integer offsets: each position's next
    whole distance (503.0 one past its own), the padding kept."""
    positions = per_head_padded_positions()
    return torch.where(positions < 0, positions, positions.floor() + 1).int()


def assert_offset_ahead_bitwise(monkeypatch, op, args, reference, fractional, heads_per_block=None):
    """op's gradients with each offset read one issue ahead (the default) and
    in its own issue (the switch at 0), the same pass otherwise: bitwise
    equal, finite, within the contract of the float64 reference (d offsets
    only for fractional positions: integer ones have none); every output
    poisoned first."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    for switch in (SWITCH, *NEEDED):
        monkeypatch.delenv(switch, raising=False)
    first, kernels = cuda_kernels_of(lambda: op(*args))
    assert dq_pass(kernels) == (fractional_pass(kernels) if fractional else PASS[False]) + ["true"], kernels
    if heads_per_block is not None:
        assert template_arguments(kernels, DQ_KERNEL)[3] == str(heads_per_block), kernels
    monkeypatch.setenv(SWITCH, "0")
    again, kernels = cuda_kernels_of(lambda: op(*args))
    assert dq_pass(kernels) == PASS[fractional] + ["false"], kernels
    if fractional:
        assert_gradients_bitwise(first, again, reference)
    else:
        assert_gradients_bitwise(first[:3], again[:3], reference[:3])
        assert torch.equal(first[3], again[3])


@requires_cuda
@pytest.mark.parametrize("positions,dtype", [("f=0.875", torch.bfloat16), ("f=0.125", torch.float16)])
@pytest.mark.parametrize("batch,seqlen", [(1, 1024), (2, 3037)])
@pytest.mark.parametrize("heads,heads_kv", [(4, 4), (8, 2), (4, 2), (3, 1)])
def test_cuda_fractional_offset_ahead_is_bitwise(monkeypatch, positions, dtype, batch, seqlen, heads, heads_kv):
    """Whole and ragged last tiles, one sequence and two, one whole position
    among fractional ones, bf16 and fp16; one, two and four heads a dq block;
    head_dim 64."""
    offsets = torch.tensor(POSITIONS[positions], device="cuda")
    args, reference = dense_backward_case(batch, seqlen, heads, heads_kv, 64, dtype, offsets, WINDOW)
    assert_offset_ahead_bitwise(monkeypatch, torch.ops.fibsparse.bwd, args, reference, True,
                                dq_heads_per_block(heads, heads_kv, 64))


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("batch,seqlen", [(1, 1024), (2, 3037)])
@pytest.mark.parametrize("heads,heads_kv", [(4, 4), (8, 2), (4, 2), (3, 1)])
def test_cuda_integer_offset_ahead_is_bitwise(monkeypatch, dtype, batch, seqlen, heads, heads_kv):
    """Integer Fibonacci offsets of a window of 128 (the farthest several key
    tiles back, so a block has many offset steps and its last ones fall out
    of reach), whole and ragged last tiles; one, two and four heads a dq
    block; head_dim 64."""
    offsets = fibonacci_offsets(128, seqlen)
    args, reference = dense_backward_case(batch, seqlen, heads, heads_kv, 64, dtype, offsets, 128)
    assert_offset_ahead_bitwise(monkeypatch, torch.ops.fibsparse.bwd, args, reference, False,
                                dq_heads_per_block(heads, heads_kv, 64))


@requires_cuda
@pytest.mark.parametrize("fractional", [True, False])
def test_cuda_offset_ahead_with_per_head_padded_positions(monkeypatch, fractional):
    """Per-head rows (one head a block, each its own row of offsets; GQA 4/2):
    20 in the first head's row, the farthest beyond the reach of the first
    blocks; padding after 17 and 2 in two rows, and a row of padding alone
    (no offset step to read ahead); fp16."""
    offsets = per_head_padded_positions() if fractional else integer_per_head_offsets()
    args, reference = dense_backward_case(1, 3037, 4, 2, 64, torch.float16, offsets, WINDOW)
    assert_offset_ahead_bitwise(monkeypatch, torch.ops.fibsparse.bwd, args, reference, fractional, 1)


@requires_cuda
@pytest.mark.parametrize("fractional", [True, False])
@pytest.mark.parametrize("heads,heads_kv", [(8, 8), (8, 2)])
def test_cuda_packed_offset_ahead(monkeypatch, heads, heads_kv, fractional):
    """A packed batch of nine sequences (0, 1, 63, 64, 65, 128, 129, 300 and
    700 keys), fp16, at Fibonacci offsets (or positions 0.375 past them), the
    farthest several key tiles back; MHA and GQA."""
    offsets = fibonacci_offsets(WINDOW, max(PACKED_LENGTHS), fractional=fractional)
    args, reference = packed_backward_case(PACKED_LENGTHS, heads, heads_kv, 64, torch.float16, offsets, WINDOW)
    assert_offset_ahead_bitwise(monkeypatch, torch.ops.fibsparse.varlen_bwd, args, reference, fractional)


@requires_cuda
@pytest.mark.parametrize("fractional", [True, False])
@pytest.mark.parametrize("setting", ["0", "1"])
def test_cuda_head_dim_128_reads_each_offset_in_its_issue(monkeypatch, setting, fractional):
    """At head_dim 128 the pass launches the issue that loads its own offset
    whatever the switch says: the old pass stays there as the A/B's control."""
    offsets = (torch.tensor(POSITIONS["f=0.875"], device="cuda") if fractional
               else fibonacci_offsets(128, 300))
    for switch in NEEDED:
        monkeypatch.delenv(switch, raising=False)
    monkeypatch.setenv(SWITCH, setting)
    _, kernels = cuda_kernels_of(backward_call(offsets, 128, window=WINDOW if fractional else 128))
    assert dq_pass(kernels)[3] == "false", kernels


@requires_cuda
def test_cuda_sums_at_each_step_read_each_offset_in_its_issue(monkeypatch):
    """With FIBSPARSE_DQ_POSITION_SUMS_FIRST=0 the fractional pass launches
    its step that sums at every step, this switch unset: the offset ahead is
    compiled with the sums first alone."""
    offsets = torch.tensor(POSITIONS["f=0.875"], device="cuda")
    for switch in (SWITCH, *NEEDED):
        monkeypatch.delenv(switch, raising=False)
    monkeypatch.setenv("FIBSPARSE_DQ_POSITION_SUMS_FIRST", "0")
    _, kernels = cuda_kernels_of(backward_call(offsets, 64, window=WINDOW))
    assert dq_pass(kernels) == ["false", "true", "false", "false"], kernels


@requires_cuda
@pytest.mark.parametrize("head_dim,fractional", [(64, True), (64, False), (128, True), (128, False)])
@pytest.mark.parametrize("setting", ["off", "2"])
def test_cuda_offset_ahead_switch_is_checked(monkeypatch, setting, head_dim, fractional):
    """The switch takes 0 or 1: any other value is refused, naming the
    variable, what it got and what it takes, before any kernel of the call
    runs: where it selects (head_dim 64) and at head_dim 128 too."""
    offsets = fibonacci_offsets(128, 300, fractional)
    assert_refused_before_any_kernel(monkeypatch, SWITCH, setting, backward_call(offsets, head_dim))
