"""Swizzled stages (each row's 16-byte chunks XOR-ed by the row) instead of
padded rows: the dk/dv pass before dq stages its q and dO rows so (integer
offsets at head_dim 64 and 128, fractional positions at 128, and at 64 with
the two-diagonal product), the dq pass with offsets its k rows (integer
offsets at 64 and 128; fractional positions keep padded rows, on which that
pass was faster). Either way the gradients are bitwise those of padded rows
(FIBSPARSE_DKDV_SWIZZLE=0, FIBSPARSE_DQ_SWIZZLE=0), dense and packed, MHA and
GQA, every output poisoned first; at fractional positions at head_dim 128
with the dk/dv pass's two diagonal products on both sides (at 64 that pass
takes swizzled stages only with its one product: test_two_diagonals.py
compares the two). A switch's bad value is refused before any kernel runs."""
import pytest
import torch

from utils import (assert_refused_before_any_kernel, backward_call, cuda_kernels_of, dq_heads_per_block,
                   fibonacci_offsets, packed, random_rows, requires_cuda, template_arguments)

DKDV_SWITCH, DQ_SWITCH = "FIBSPARSE_DKDV_SWIZZLE", "FIBSPARSE_DQ_SWIZZLE"
DKDV_KERNEL, DQ_KERNEL = "dkdv_mma_kernel", "dq_from_dscores_with_offsets_kernel"
SWITCH_KERNELS = {DKDV_SWITCH: DKDV_KERNEL, DQ_SWITCH: DQ_KERNEL}


def swizzled(kernels, switch):
    """The switch's kernel's swizzle argument: the dk/dv pass's sixth
    (kSwizzledRows), the dq pass's sixth (kSwizzledK)."""
    return template_arguments(kernels, SWITCH_KERNELS[switch])[5] == "true"


def assert_bitwise_with_padded_rows(monkeypatch, op, args, outputs=3, switches=(DKDV_SWITCH, DQ_SWITCH)):
    """op's first `outputs` results (dq, dk, dv, and d offsets with 4) with
    swizzled stages (the default) and with each switch's padded ones: finite
    and equal bit for bit. At fractional positions both sides take the dk/dv
    pass's two diagonal products: its two-diagonal product needs swizzled
    stages, so padded ones would change the products' order too
    (test_two_diagonals.py compares the two)."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    monkeypatch.setenv("FIBSPARSE_DKDV_TWO_DIAGONALS", "0")
    for switch in (DKDV_SWITCH, DQ_SWITCH, "FIBSPARSE_DKDV_V_SMEM", "FIBSPARSE_DQ_TWO_DIAGONALS"):
        monkeypatch.delenv(switch, raising=False)
    grads, kernels = cuda_kernels_of(lambda: op(*args)[:outputs])
    dkdv = template_arguments(kernels, DKDV_KERNEL)
    if DKDV_SWITCH in switches and dkdv[2] == "128" and dkdv[4] != "true":
        # Head_dim 128 swizzles the dk/dv pass's stages only with the v rows in
        # shared memory, where two blocks with them fit an SM (an H100 or H200
        # must); the dq pass's are compared all the same.
        assert torch.cuda.get_device_capability() != (9, 0), "a compute capability 9.0 GPU keeps v in shared memory"
        switches = tuple(switch for switch in switches if switch != DKDV_SWITCH)
        if not switches:
            pytest.skip("this device keeps v in registers, with padded stages: two blocks with the v rows do not fit")
    for switch in switches:
        assert swizzled(kernels, switch), (switch, kernels)
    for name, a in zip(["dq", "dk", "dv", "d offsets"], grads):
        assert a.isfinite().all(), name
    for switch in switches:
        monkeypatch.setenv(switch, "0")
        padded, kernels = cuda_kernels_of(lambda: op(*args)[:outputs])
        assert not swizzled(kernels, switch), (switch, kernels)
        monkeypatch.delenv(switch)
        for name, a, b in zip(["dq", "dk", "dv", "d offsets"], grads, padded):
            assert torch.equal(a, b), (switch, name)


@requires_cuda
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("heads,heads_kv", [(4, 4), (4, 2), (8, 2), (3, 1)])
@pytest.mark.parametrize("window", [65, 128, 129])
def test_cuda_swizzled_stages_are_bitwise_padded_stages(monkeypatch, heads, heads_kv, window, head_dim):
    """A sequence whose last key tile is ragged, with and without a gradient of
    lse; one, two and (at head_dim 64) four heads a dq block (mma_tiles.cuh's
    heads_per_block: the kv group's size, at most 4 at 64 and 2 at 128)."""
    seqlen, dtype = 3037, torch.bfloat16
    offsets = fibonacci_offsets(window, seqlen)
    q = random_rows((1, seqlen, heads, head_dim), dtype, window)
    k, v = (random_rows((1, seqlen, heads_kv, head_dim), dtype, window + i) for i in (1, 2))
    out, lse = torch.ops.fibsparse.fwd(q, k, v, offsets, [window], 0.125)
    dout, dlse = random_rows(out.shape, dtype, 7), random_rows(lse.shape, torch.float32, 8)
    for grad_lse in (dlse, None):
        assert_bitwise_with_padded_rows(monkeypatch, torch.ops.fibsparse.bwd,
                                        (dout, q, k, v, out, lse, grad_lse, offsets, [window], 0.125))
    expected = dq_heads_per_block(heads, heads_kv, head_dim)
    _, kernels = cuda_kernels_of(lambda: torch.ops.fibsparse.bwd(dout, q, k, v, out, lse, dlse, offsets, [window],
                                                                 0.125))
    assert template_arguments(kernels, DQ_KERNEL)[3] == str(expected), kernels


@requires_cuda
@pytest.mark.parametrize("heads,heads_kv", [(4, 4), (8, 2), (3, 1)])
@pytest.mark.parametrize("window", [65, 128, 129])
def test_cuda_fractional_swizzled_stages_are_bitwise_padded_stages(monkeypatch, heads, heads_kv, window):
    """Fractional positions at head_dim 128 (the dk/dv pass): each warp's
    strip is 17 rows from row 17 w, not a multiple of 8; d offsets compared
    too."""
    seqlen, dtype, head_dim = 3037, torch.bfloat16, 128
    offsets = fibonacci_offsets(window, seqlen, fractional=True)
    q = random_rows((1, seqlen, heads, head_dim), dtype, window)
    k, v = (random_rows((1, seqlen, heads_kv, head_dim), dtype, window + i) for i in (1, 2))
    out, lse = torch.ops.fibsparse.fwd(q, k, v, offsets, [window], head_dim ** -0.5)
    dout, dlse = random_rows(out.shape, dtype, 7), random_rows(lse.shape, torch.float32, 8)
    for grad_lse in (dlse, None):
        assert_bitwise_with_padded_rows(monkeypatch, torch.ops.fibsparse.bwd,
                                        (dout, q, k, v, out, lse, grad_lse, offsets, [window], head_dim ** -0.5), 4,
                                        switches=(DKDV_SWITCH,))


@requires_cuda
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("setting", [None, "1", "0"])
def test_cuda_fractional_dq_pass_k_rows(monkeypatch, setting, head_dim):
    """The fractional dq pass with its two-diagonal product stages swizzled
    k rows at head_dim 64, where its strips are 16 rows (row 16 in
    registers), unless FIBSPARSE_DQ_SWIZZLE is 0, and padded ones at 128
    whatever the switch says (strips of 17 rows: on swizzled ones it was
    slower)."""
    if setting is None:
        monkeypatch.delenv(DQ_SWITCH, raising=False)
    else:
        monkeypatch.setenv(DQ_SWITCH, setting)
    monkeypatch.delenv("FIBSPARSE_DQ_TWO_DIAGONALS", raising=False)
    _, kernels = cuda_kernels_of(backward_call(fibonacci_offsets(128, 300, fractional=True), head_dim))
    swizzled = "true" if head_dim == 64 and setting != "0" else "false"
    assert template_arguments(kernels, DQ_KERNEL)[5:7] == [swizzled, "true"], kernels  # kSwizzledK, kTwoDiagonals


@requires_cuda
@pytest.mark.parametrize("head_dim,fractional", [(64, False), (128, False), (128, True)])
def test_cuda_packed_swizzled_stages_are_bitwise_padded_stages(monkeypatch, head_dim, fractional):
    """A packed batch (empty, one-row, one-tile and ragged sequences), float16."""
    lengths = [2000, 1, 0, 64, 700, 129, 63]
    cu, longest = packed(lengths, "cuda")
    window, dtype = 128, torch.float16
    offsets = fibonacci_offsets(window, longest, fractional)
    q = random_rows((sum(lengths), 8, head_dim), dtype, 20)
    k, v = (random_rows((sum(lengths), 2, head_dim), dtype, 21 + i) for i in range(2))
    out, lse = torch.ops.fibsparse.varlen_fwd(q, k, v, cu, cu, longest, longest, offsets, [window], 0.125)
    dout, dlse = random_rows(out.shape, dtype, 30), random_rows(lse.shape, torch.float32, 31)
    assert_bitwise_with_padded_rows(monkeypatch, torch.ops.fibsparse.varlen_bwd,
                                    (dout, q, k, v, out, lse, dlse, cu, cu, longest, longest, offsets, [window],
                                     0.125), 4 if fractional else 3,
                                    switches=(DKDV_SWITCH,) if fractional else (DKDV_SWITCH, DQ_SWITCH))


@requires_cuda
@pytest.mark.parametrize("head_dim,offsets_kind", [(32, "integer"), (64, "integer"), (64, "fractional"),
                                                   (128, "fractional"), (32, "none"), (64, "none")])
@pytest.mark.parametrize("switch", [DKDV_SWITCH, DQ_SWITCH])
@pytest.mark.parametrize("setting", ["off", "", "2"])
def test_cuda_swizzle_switch_is_checked(monkeypatch, switch, setting, offsets_kind, head_dim):
    """A switch takes 0 or 1: any other value is refused, naming the variable,
    what it got and what it takes, before any of the backward's kernels runs;
    also where it selects nothing: on the window alone's backward, at head_dim
    32, and for the dq pass at fractional positions."""
    if offsets_kind == "none":
        offsets = torch.zeros(0, dtype=torch.int32, device="cuda")
    else:
        offsets = fibonacci_offsets(128, 300, fractional=offsets_kind == "fractional")
    assert_refused_before_any_kernel(monkeypatch, switch, setting, backward_call(offsets, head_dim))
