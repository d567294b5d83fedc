"""The dk/dv pass that runs before the dq pass at head_dim 64 and 128 with
integer offsets stages its q and dO rows swizzled (each row's 16-byte chunks XOR-ed
by the row) instead of padded: bitwise the gradients of the padded stages
(FIBSPARSE_DKDV_SWIZZLE=0), dense and packed, MHA and GQA, every output
poisoned first."""
import pytest
import torch

from utils import cuda_kernels_of, dkdv_template_arguments, fibonacci_offsets, packed, random_rows, requires_cuda

SWITCH = "FIBSPARSE_DKDV_SWIZZLE"


def swizzled(kernels):
    """dkdv_mma_kernel's sixth template argument, kSwizzledRows."""
    return dkdv_template_arguments(kernels)[5] == "true"


def assert_bitwise_with_padded_rows(monkeypatch, op, args):
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    monkeypatch.delenv(SWITCH, raising=False)
    grads, kernels = cuda_kernels_of(lambda: op(*args)[:3])
    assert swizzled(kernels), kernels
    monkeypatch.setenv(SWITCH, "0")
    padded, kernels = cuda_kernels_of(lambda: op(*args)[:3])
    assert not swizzled(kernels), kernels
    for name, a, b in zip(["dq", "dk", "dv"], grads, padded):
        assert a.isfinite().all(), name
        assert torch.equal(a, b), name


@requires_cuda
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("heads,heads_kv", [(4, 4), (8, 2), (3, 1)])
@pytest.mark.parametrize("window", [65, 128, 129])
def test_cuda_swizzled_stages_are_bitwise_padded_stages(monkeypatch, heads, heads_kv, window, head_dim):
    """A sequence whose last key tile is ragged, with and without a gradient of lse."""
    seqlen, dtype = 3037, torch.bfloat16
    offsets = fibonacci_offsets(window, seqlen)
    q = random_rows((1, seqlen, heads, head_dim), dtype, window)
    k, v = (random_rows((1, seqlen, heads_kv, head_dim), dtype, window + i) for i in (1, 2))
    out, lse = torch.ops.fibsparse.fwd(q, k, v, offsets, [window], 0.125)
    dout, dlse = random_rows(out.shape, dtype, 7), random_rows(lse.shape, torch.float32, 8)
    for grad_lse in (dlse, None):
        assert_bitwise_with_padded_rows(monkeypatch, torch.ops.fibsparse.bwd,
                                        (dout, q, k, v, out, lse, grad_lse, offsets, [window], 0.125))


@requires_cuda
@pytest.mark.parametrize("head_dim", [64, 128])
def test_cuda_packed_swizzled_stages_are_bitwise_padded_stages(monkeypatch, head_dim):
    """A packed batch (empty, one-row, one-tile and ragged sequences), float16."""
    lengths = [2000, 1, 0, 64, 700, 129, 63]
    cu, longest = packed(lengths, "cuda")
    window, dtype = 128, torch.float16
    offsets = fibonacci_offsets(window, longest)
    q = random_rows((sum(lengths), 8, head_dim), dtype, 20)
    k, v = (random_rows((sum(lengths), 2, head_dim), dtype, 21 + i) for i in range(2))
    out, lse = torch.ops.fibsparse.varlen_fwd(q, k, v, cu, cu, longest, longest, offsets, [window], 0.125)
    dout, dlse = random_rows(out.shape, dtype, 30), random_rows(lse.shape, torch.float32, 31)
    assert_bitwise_with_padded_rows(monkeypatch, torch.ops.fibsparse.varlen_bwd,
                                    (dout, q, k, v, out, lse, dlse, cu, cu, longest, longest, offsets, [window],
                                     0.125))


@requires_cuda
@pytest.mark.parametrize("setting", ["off", "", "2"])
def test_cuda_swizzle_switch_is_checked(monkeypatch, setting):
    """FIBSPARSE_DKDV_SWIZZLE takes 0 or 1: any other value is refused, naming
    the variable, what it got and what it takes; the backward returns nothing."""
    window, seqlen = 128, 300
    offsets = fibonacci_offsets(window, seqlen)
    q, k, v = (random_rows((1, seqlen, 2, 64), torch.bfloat16, i) for i in range(3))
    out, lse = torch.ops.fibsparse.fwd(q, k, v, offsets, [window], 0.125)
    monkeypatch.setenv(SWITCH, setting)
    with pytest.raises(RuntimeError, match=f"{SWITCH} must be one of 0, 1 \\(or unset\\), got '{setting}'"):
        torch.ops.fibsparse.bwd(torch.randn_like(out), q, k, v, out, lse, torch.zeros_like(lse), offsets, [window],
                                0.125)
