"""The dk/dv pass that runs before the dq pass at head_dim 128 keeps each
warp's v rows in shared memory (its products load them as they go): bitwise
the gradients of the same pass with v in registers (FIBSPARSE_DKDV_V_SMEM=0),
dense and packed, integer offsets and fractional positions, MHA and GQA."""
import pytest
import torch

from utils import cuda_kernels_of, fibonacci_offsets, packed, random_rows, requires_cuda, template_arguments

SWITCH = "FIBSPARSE_DKDV_V_SMEM"


def keeps_v_in_smem(kernels):
    """dkdv_mma_kernel's fifth template argument, kVInSmem."""
    return template_arguments(kernels, "dkdv_mma_kernel")[4] == "true"


def assert_bitwise_with_v_in_registers(monkeypatch, op, args):
    """op's dq, dk, dv with v in shared memory (the default) and with v in
    registers: equal bit for bit, finite, and each from the pass it names.
    A device where two blocks with the v rows do not fit an SM keeps v in
    registers (an H100 or H200 must not). At fractional positions both sides
    take the dk/dv pass's two diagonal products: its two-diagonal product
    needs the v rows in shared memory, so switching them off would change the
    products' order too (test_two_diagonals.py compares the two)."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    monkeypatch.setenv("FIBSPARSE_DKDV_TWO_DIAGONALS", "0")
    in_smem, kernels = cuda_kernels_of(lambda: op(*args)[:3])
    if not keeps_v_in_smem(kernels):
        assert torch.cuda.get_device_capability() != (9, 0), "a compute capability 9.0 GPU keeps v in shared memory"
        pytest.skip("this device keeps v in registers: two blocks with the v rows do not fit an SM")
    monkeypatch.setenv(SWITCH, "0")
    in_registers, kernels = cuda_kernels_of(lambda: op(*args)[:3])
    assert not keeps_v_in_smem(kernels)
    for name, a, b in zip(["dq", "dk", "dv"], in_smem, in_registers):
        assert a.isfinite().all(), name
        assert torch.equal(a, b), name


@requires_cuda
@pytest.mark.parametrize("fractional", [False, True])
@pytest.mark.parametrize("heads,heads_kv", [(4, 4), (8, 2)])
@pytest.mark.parametrize("window", [65, 128, 129])
def test_cuda_v_in_shared_memory_is_bitwise_v_in_registers(monkeypatch, fractional, heads, heads_kv, window):
    """A sequence whose last key tile is ragged (its last warp's v rows past
    the last key are zeros), with and without a gradient of lse."""
    seqlen, dtype = 3037, torch.bfloat16
    offsets = fibonacci_offsets(window, seqlen, fractional)
    q = random_rows((1, seqlen, heads, 128), dtype, window)
    k, v = (random_rows((1, seqlen, heads_kv, 128), dtype, window + i) for i in (1, 2))
    scale = 128 ** -0.5
    out, lse = torch.ops.fibsparse.fwd(q, k, v, offsets, [window], scale)
    dout, dlse = random_rows(out.shape, dtype, 7), random_rows(lse.shape, torch.float32, 8)
    for grad_lse in (dlse, None):
        assert_bitwise_with_v_in_registers(monkeypatch, torch.ops.fibsparse.bwd,
                                           (dout, q, k, v, out, lse, grad_lse, offsets, [window], scale))
        monkeypatch.delenv(SWITCH)


@requires_cuda
def test_cuda_packed_v_in_shared_memory_is_bitwise_v_in_registers(monkeypatch):
    """A packed batch (empty, one-row, one-tile and ragged sequences), float16."""
    lengths = [2000, 1, 0, 64, 700, 129, 63]
    cu, longest = packed(lengths, "cuda")
    window, scale, dtype = 128, 128 ** -0.5, torch.float16
    offsets = fibonacci_offsets(window, longest, False)
    q = random_rows((sum(lengths), 8, 128), dtype, 20)
    k, v = (random_rows((sum(lengths), 2, 128), dtype, 21 + i) for i in range(2))
    out, lse = torch.ops.fibsparse.varlen_fwd(q, k, v, cu, cu, longest, longest, offsets, [window], scale)
    dout, dlse = random_rows(out.shape, dtype, 30), random_rows(lse.shape, torch.float32, 31)
    assert_bitwise_with_v_in_registers(monkeypatch, torch.ops.fibsparse.varlen_bwd,
                                       (dout, q, k, v, out, lse, dlse, cu, cu, longest, longest, offsets, [window],
                                        scale))


@requires_cuda
def test_cuda_v_smem_switch_refuses_other_values(monkeypatch):
    """A value the switch does not take is refused, naming the variable."""
    offsets = fibonacci_offsets(128, 512, False)
    q, k, v = (random_rows((1, 512, 4, 128), torch.bfloat16, i) for i in range(3))
    out, lse = torch.ops.fibsparse.fwd(q, k, v, offsets, [128], 0.125)
    monkeypatch.setenv(SWITCH, "yes")
    with pytest.raises(RuntimeError, match=SWITCH):
        torch.ops.fibsparse.bwd(out, q, k, v, out, lse, None, offsets, [128], 0.125)
