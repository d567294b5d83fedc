"""The CUDA backward's last step: d offsets from its partial sums, one block
a (head, offset) row in a fixed order (position_sums.cu), where
FIBSPARSE_POSITION_SUMS_KERNEL=0 has torch sum them. dq, dk and dv do not
depend on it (bitwise equal); d offsets is the same sum in another order,
equal up to rounding, within the contract of the float64 reference, and
bitwise the same from call to call. Every output is poisoned first, the
sums' too. A row of positions shared by the heads summing to the heads' rows
is test_kernels.py's test. A bad value of the switch is refused before any
kernel runs."""
import pytest
import torch

from utils import (FRACTIONAL_POSITIONS, FRACTIONAL_WINDOW, assert_refused_before_any_kernel, backward_call,
                   cuda_kernels_of, dense_backward_case, fibonacci_offsets, packed_backward_case,
                   packed_fractional_case, position_dtype, random_rows, rel_err, requires_cuda)

SWITCH = "FIBSPARSE_POSITION_SUMS_KERNEL"
KERNEL = "sum_position_partials_kernel"
WINDOW, POSITIONS = FRACTIONAL_WINDOW, FRACTIONAL_POSITIONS
# The relative difference of two orders of one float sum (thousands of terms)
# stays near the type's rounding.
ORDER_TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}
# The sums' kernel launches at most this many blocks (kMaxSumBlocks in
# csrc/cuda/position_sums.cu); a block past it takes further rows.
SUM_KERNEL_BLOCKS = 65536


def assert_sums_match(monkeypatch, op, args, reference=None):
    """op's gradients with the row-sum kernel (the default) and with torch's
    sum: the kernel ran only on the default side; dq, dk, dv bitwise equal;
    d offsets within the order's rounding of torch's sum, the tight check
    (both within the bf16 contract of the float64 reference where one is
    given, the loosest: the float32 contract's own check allows for
    cancellation, test_kernels.py); a second default call bitwise the first.
    Returns both sides' gradients."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    monkeypatch.delenv(SWITCH, raising=False)
    ours, kernels = cuda_kernels_of(lambda: op(*args))
    assert any(KERNEL in name for name in kernels), kernels
    again = op(*args)
    monkeypatch.setenv(SWITCH, "0")
    torchs, kernels = cuda_kernels_of(lambda: op(*args))
    assert not any(KERNEL in name for name in kernels), kernels
    for i, (name, a, b, repeat) in enumerate(zip(["dq", "dk", "dv", "d offsets"], ours, torchs, again)):
        assert a.isfinite().all() and b.isfinite().all(), name
        assert torch.equal(a, repeat), name
        if name != "d offsets":
            assert torch.equal(a, b), name
        if reference is not None:
            assert rel_err(a, reference[i]) < 1e-2 and rel_err(b, reference[i]) < 1e-2, name
    assert rel_err(ours[3], torchs[3]) < ORDER_TOLERANCE[ours[3].dtype]
    return ours, torchs


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_head"])
def test_cuda_position_sums_against_torchs(monkeypatch, shared, dtype):
    """Three sequences of 3000 tokens, GQA 4/2: rows of 564 partials, more
    than two of a block's strided passes and not a whole number of them, with
    every warp's elements nonzero. The tensor-core backward (bf16) and the
    lane kernels (float32, with float partials; float64, with double ones);
    positions shared by the heads or one row a head (padded with -1)."""
    rows = (POSITIONS["f=0.875"] if shared else
            [[16.5, 29.5, 200.5, 900.5],
             [17.25, 50.75, -1.0, -1.0],
             [16.125, -1.0, -1.0, -1.0],
             [33.5, 70.5, 2000.5, -1.0]])
    offsets = torch.tensor(rows, device="cuda", dtype=position_dtype(dtype))
    head_dim = 64 if dtype == torch.bfloat16 else 32
    args, reference = dense_backward_case(3, 3000, 4, 2, head_dim, dtype, offsets, WINDOW)
    assert_sums_match(monkeypatch, torch.ops.fibsparse.bwd, args, reference)


@requires_cuda
def test_cuda_packed_position_sums(monkeypatch):
    """A packed batch of nine sequences (0, 1, 63, 64, 65, 128, 129, 300 and
    700 keys), whose partials past each sequence's end are zeros."""
    args, reference = packed_fractional_case(128, WINDOW, torch.bfloat16)
    assert_sums_match(monkeypatch, torch.ops.fibsparse.varlen_bwd, args, reference)


@requires_cuda
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("setting", ["off", "2"])
def test_cuda_position_sums_switch_is_checked(monkeypatch, setting, packed):
    """The switch takes 0 or 1: any other value is refused, naming the
    variable, what it got and what it takes, before any kernel of the call
    runs, in the dense and the packed backward."""
    offsets = fibonacci_offsets(128, 300, fractional=True)
    if packed:
        args, _ = packed_backward_case([300, 200], 4, 2, 64, torch.bfloat16, offsets, 128)
        call = lambda: torch.ops.fibsparse.varlen_bwd(*args)  # noqa: E731
    else:
        call = backward_call(offsets, 128)
    assert_refused_before_any_kernel(monkeypatch, SWITCH, setting, call)


@requires_cuda
def test_cuda_position_sums_past_the_grid_cap(monkeypatch):
    """64 heads of 1030 positions each: 65 920 rows of partials, more than
    the kernel's 65 536 blocks, so that some blocks sum a second row. The
    positions differ by head (a fraction of their own), so a row summed into
    another's place, or skipped, shows. Without the float64 reference (its
    gather would hold every query's 1046 keys): assert_sums_match's checks,
    then the rows past the grid one by one."""
    heads, count, seqlen = 64, 1030, 1100
    fractions = 0.25 + 0.5 * torch.arange(heads, dtype=torch.float32)[:, None] / heads
    offsets = (16 + torch.arange(count, dtype=torch.float32)[None, :] + fractions).cuda()
    scale = 32 ** -0.5
    q, k, v = (random_rows((1, seqlen, heads, 32), torch.float32, 40 + i) for i in range(3))
    out, lse = torch.ops.fibsparse.fwd(q, k, v, offsets, [WINDOW], scale)
    dout, dlse = random_rows(out.shape, torch.float32, 43), random_rows(lse.shape, torch.float32, 44)
    args = (dout, q, k, v, out, lse, dlse, offsets, [WINDOW], scale)
    ours, torchs = assert_sums_match(monkeypatch, torch.ops.fibsparse.bwd, args)
    assert ours[3].shape == (heads, count) and heads * count > SUM_KERNEL_BLOCKS
    # The rows past the grid, each a block's second: row r is (head r // count,
    # offset r % count), so they are head 63's last 384 positions. Each one is
    # summed (nonzero: its keys lie inside the sequence) and in its own place.
    second_rows = ours[3].flatten()[SUM_KERNEL_BLOCKS:]
    assert (second_rows != 0).all()
    assert rel_err(second_rows, torchs[3].flatten()[SUM_KERNEL_BLOCKS:]) < ORDER_TOLERANCE[torch.float32]
