"""The fractional dk/dv pass keeps its query head's global pointers. In the
backward with stored dS, at head_dim 64 and 128, the dk/dv pass with kept
shared-memory addresses (test_dkdv_kept_rows.py) forms the pointers its steps
copy q, dO, lse and delta from, and read their offset from, once per query
head, and keeps them in shared memory; at head_dim 64 also the rows its steps
store dS and the d(position) terms to, and its band steps their dS tiles.
FIBSPARSE_DKDV_HEAD_POINTERS=0 forms them at every step. The addresses,
copies, products, sums and stores are the same, so dq (which reads the stored
dS), dk, dv and d offsets (the stored terms) are bitwise equal either way:
dense and packed, MHA and GQA (where a block's steps move from head to head),
offsets shared or per head, every output poisoned first, and within the
float64 reference's contract. Without the kept addresses the pass launches the
step that forms both; a bad value of the switch is refused before any kernel
runs."""
import pytest
import torch

from utils import (FRACTIONAL_POSITIONS, FRACTIONAL_WINDOW, assert_gradients_bitwise,
                   assert_refused_before_any_kernel, backward_call, cuda_kernels_of, dense_backward_case,
                   fibonacci_offsets, packed_backward_case, random_offsets, requires_cuda, template_arguments)

SWITCH = "FIBSPARSE_DKDV_HEAD_POINTERS"
# The kernel's switches, which its kept pointers need as they are by default.
NEEDED = ("FIBSPARSE_DKDV_FRACTIONAL_KEPT_ROWS", "FIBSPARSE_DKDV_TWO_DIAGONALS", "FIBSPARSE_DKDV_NEXT_WARP_SHARE",
          "FIBSPARSE_DKDV_SWIZZLE", "FIBSPARSE_DKDV_V_SMEM")

WINDOW, POSITIONS = FRACTIONAL_WINDOW, FRACTIONAL_POSITIONS


def kept(kernels):
    """dkdv_mma_kernel's ninth template argument, kKeptHeadPointers, its eighth,
    kKeptFractionalRows, and whether its v rows are in shared memory on
    swizzled stages (the fifth and sixth), which the kept pointers need."""
    arguments = template_arguments(kernels, "dkdv_mma_kernel")
    return arguments[8] == "true", arguments[7] == "true", arguments[4:6] == ["true", "true"]


def assert_kept_pointers_bitwise(monkeypatch, op, args, reference):
    """op's gradients with the kept pointers (the default) and with the
    switch's pointers formed per step: bitwise equal, finite, within the
    contract of the float64 reference; every output poisoned first."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    for switch in (SWITCH, *NEEDED):
        monkeypatch.delenv(switch, raising=False)
    with_kept, kernels = cuda_kernels_of(lambda: op(*args))
    is_kept, rows_kept, v_rows_swizzled = kept(kernels)
    if not v_rows_swizzled:
        pytest.skip("the dk/dv pass's blocks with their v rows (two at head_dim 128, three at 64) do not fit an SM")
    assert (is_kept, rows_kept) == (True, True), kernels
    monkeypatch.setenv(SWITCH, "0")
    formed, kernels = cuda_kernels_of(lambda: op(*args))
    assert kept(kernels) == (False, True, True), kernels
    assert_gradients_bitwise(with_kept, formed, reference)


@requires_cuda
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("positions,dtype", [("f=0.875", torch.bfloat16), ("f=0.125", torch.float16)])
@pytest.mark.parametrize("batch,seqlen", [(1, 1024), (2, 3037)])
@pytest.mark.parametrize("heads,heads_kv", [(4, 4), (8, 2), (3, 1)])
def test_cuda_kept_pointers_are_bitwise_formed_pointers(monkeypatch, positions, dtype, batch, seqlen, heads, heads_kv,
                                                        head_dim):
    """Whole and ragged last key tiles, one sequence and two (the second's
    pointers start a batch stride on), MHA and GQA groups of 4 and 3 (a
    block's steps move through its group's heads), bf16 and fp16, with a
    gradient of lse."""
    offsets = torch.tensor(POSITIONS[positions], device="cuda")
    args, reference = dense_backward_case(batch, seqlen, heads, heads_kv, head_dim, dtype, offsets, WINDOW)
    assert_kept_pointers_bitwise(monkeypatch, torch.ops.fibsparse.bwd, args, reference)


@requires_cuda
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("heads,heads_kv", [(4, 4), (6, 2)])
def test_cuda_kept_pointers_with_offsets_per_head(monkeypatch, heads, heads_kv, head_dim):
    """Each query head its own row of positions: the kept row of offsets
    changes with the head, and a group's heads reach different numbers of
    offsets (the block's steps run to the most any of them needs)."""
    generator = torch.Generator().manual_seed(head_dim + heads)
    offsets = random_offsets(WINDOW, 5, heads, True, "cuda", torch.float32, spread=60, generator=generator)
    args, reference = dense_backward_case(2, 1500, heads, heads_kv, head_dim, torch.bfloat16, offsets, WINDOW)
    assert_kept_pointers_bitwise(monkeypatch, torch.ops.fibsparse.bwd, args, reference)


@requires_cuda
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("heads,heads_kv", [(8, 8), (8, 2)])
def test_cuda_packed_kept_pointers(monkeypatch, heads, heads_kv, head_dim):
    """A packed batch of nine sequences (0, 1, 63, 64, 65, 128, 129, 300
    and 700 keys), fp16, at Fibonacci positions 0.375 past their distances,
    the farthest several key tiles back: each sequence's pointers start at
    its own first row."""
    lengths = [700, 1, 0, 64, 65, 129, 63, 128, 300]
    offsets = fibonacci_offsets(WINDOW, max(lengths), fractional=True)
    args, reference = packed_backward_case(lengths, heads, heads_kv, head_dim, torch.float16, offsets, WINDOW)
    assert_kept_pointers_bitwise(monkeypatch, torch.ops.fibsparse.varlen_bwd, args, reference)


@requires_cuda
@pytest.mark.parametrize("head_dim", [64, 128])
def test_cuda_without_the_kept_rows_the_step_forms_its_pointers(monkeypatch, head_dim):
    """With FIBSPARSE_DKDV_FRACTIONAL_KEPT_ROWS=0 the pass launches the step
    that forms its addresses and its pointers, this switch unset: the kept
    pointers are compiled beside the kept rows alone."""
    offsets = torch.tensor(POSITIONS["f=0.875"], device="cuda")
    for switch in (SWITCH, *NEEDED):
        monkeypatch.delenv(switch, raising=False)
    call = backward_call(offsets, head_dim, window=WINDOW)
    _, kernels = cuda_kernels_of(call)
    if not kept(kernels)[2]:
        pytest.skip("the dk/dv pass's blocks with their v rows do not fit an SM")
    assert kept(kernels) == (True, True, True), kernels
    monkeypatch.setenv("FIBSPARSE_DKDV_FRACTIONAL_KEPT_ROWS", "0")
    _, kernels = cuda_kernels_of(call)
    assert kept(kernels) == (False, False, True), kernels


@requires_cuda
@pytest.mark.parametrize("fractional", [True, False])
@pytest.mark.parametrize("setting", ["off", "2"])
def test_cuda_head_pointers_switch_is_checked(monkeypatch, setting, fractional):
    """The switch takes 0 or 1: any other value is refused, naming the
    variable, what it got and what it takes, before any kernel of the call
    runs, with integer offsets too."""
    offsets = fibonacci_offsets(128, 300, fractional)
    assert_refused_before_any_kernel(monkeypatch, SWITCH, setting, backward_call(offsets, 128))
