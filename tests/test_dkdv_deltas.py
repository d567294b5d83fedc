"""The backward with stored dS and offsets forms delta in its dk/dv pass: each
block writes its own tile's queries' delta and waits for the tiles it reads,
in place of a delta pass. Bitwise the gradients of the same backward with
the delta pass (FIBSPARSE_DKDV_DELTAS=0), dense and packed, integer offsets
and fractional positions, MHA and GQA, head_dim 64 and 128, with and
without a gradient of lse; every delta read was written (outputs and
buffers poisoned with NaN first)."""
import pytest
import torch

from fibsparse_ext.schedules import layer_offsets
from utils import cuda_kernels_of, packed, random_rows, requires_cuda

SWITCH = "FIBSPARSE_DKDV_DELTAS"


def offsets_of(window, seqlen, fractional):
    values = torch.tensor(layer_offsets("fibonacci", 1.0, window, seqlen), dtype=torch.float64, device="cuda")
    return (values + 0.375).float() if fractional else values.int()


def forms_deltas(kernels):
    """Whether the backward ran the dk/dv pass that forms delta (its last
    template argument, kFormsDeltas) and no delta pass."""
    dkdv = [name for name in kernels if "dkdv_mma_kernel" in name]
    assert len(dkdv) == 1, kernels
    arguments = dkdv[0][dkdv[0].index("<") + 1:dkdv[0].rindex(">(")].split(", ")
    has_delta_pass = any("delta_kernel" in name for name in kernels)
    assert (arguments[-1] == "true") != has_delta_pass, kernels
    return not has_delta_pass


def assert_bitwise_with_delta_pass(monkeypatch, op, args):
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    monkeypatch.setenv(SWITCH, "1")
    formed, kernels = cuda_kernels_of(lambda: op(*args)[:3])
    assert forms_deltas(kernels)
    monkeypatch.setenv(SWITCH, "0")
    from_pass, kernels = cuda_kernels_of(lambda: op(*args)[:3])
    assert not forms_deltas(kernels)
    for name, a, b in zip(["dq", "dk", "dv"], formed, from_pass):
        assert a.isfinite().all(), name
        assert torch.equal(a, b), name
    monkeypatch.delenv(SWITCH)


@requires_cuda
@pytest.mark.parametrize("head_dim,fractional", [(64, False), (128, False), (128, True)])
@pytest.mark.parametrize("heads,heads_kv", [(4, 4), (8, 2)])
@pytest.mark.parametrize("window", [65, 128])
def test_cuda_formed_deltas_are_bitwise_the_delta_pass(monkeypatch, head_dim, fractional, heads, heads_kv, window):
    """A sequence whose last tile is ragged, long enough that offsets reach
    across many tiles (up to 37 of them)."""
    seqlen, dtype = 2390, torch.bfloat16
    offsets = offsets_of(window, seqlen, fractional)
    q = random_rows((1, seqlen, heads, head_dim), dtype, window)
    k, v = (random_rows((1, seqlen, heads_kv, head_dim), dtype, window + i) for i in (1, 2))
    scale = head_dim ** -0.5
    out, lse = torch.ops.fibsparse.fwd(q, k, v, offsets, [window], scale)
    dout, dlse = random_rows(out.shape, dtype, 7), random_rows(lse.shape, torch.float32, 8)
    for grad_lse in (dlse, None):
        assert_bitwise_with_delta_pass(monkeypatch, torch.ops.fibsparse.bwd,
                                       (dout, q, k, v, out, lse, grad_lse, offsets, [window], scale))


@requires_cuda
@pytest.mark.parametrize("fractional", [False, True])
def test_cuda_packed_formed_deltas_are_bitwise_the_delta_pass(monkeypatch, fractional):
    """A packed batch (empty, one-row, one-tile and ragged sequences), float16,
    a dense batch of two sequences after it."""
    lengths = [2000, 1, 0, 64, 700, 129, 63]
    cu, longest = packed(lengths, "cuda")
    window, scale, dtype = 128, 128 ** -0.5, torch.float16
    offsets = offsets_of(window, longest, fractional)
    q = random_rows((sum(lengths), 8, 128), dtype, 20)
    k, v = (random_rows((sum(lengths), 2, 128), dtype, 21 + i) for i in range(2))
    out, lse = torch.ops.fibsparse.varlen_fwd(q, k, v, cu, cu, longest, longest, offsets, [window], scale)
    dout, dlse = random_rows(out.shape, dtype, 30), random_rows(lse.shape, torch.float32, 31)
    assert_bitwise_with_delta_pass(monkeypatch, torch.ops.fibsparse.varlen_bwd,
                                   (dout, q, k, v, out, lse, dlse, cu, cu, longest, longest, offsets, [window], scale))
    q, k, v = (random_rows((2, 1000, 4, 128), dtype, 40 + i) for i in range(3))
    offsets = offsets_of(window, 1000, fractional)
    out, lse = torch.ops.fibsparse.fwd(q, k, v, offsets, [window], scale)
    assert_bitwise_with_delta_pass(monkeypatch, torch.ops.fibsparse.bwd,
                                   (random_rows(out.shape, dtype, 50), q, k, v, out, lse, None, offsets, [window],
                                    scale))


@requires_cuda
def test_cuda_formed_deltas_are_the_default(monkeypatch):
    """Without the switch the backward with stored dS and offsets forms delta in its dk/dv pass."""
    monkeypatch.delenv(SWITCH, raising=False)
    offsets = offsets_of(128, 700, False)
    q, k, v = (random_rows((1, 700, 4, 64), torch.bfloat16, i) for i in range(3))
    out, lse = torch.ops.fibsparse.fwd(q, k, v, offsets, [128], 0.125)
    _, kernels = cuda_kernels_of(lambda: torch.ops.fibsparse.bwd(out, q, k, v, out, lse, None, offsets, [128], 0.125))
    assert forms_deltas(kernels)


@requires_cuda
def test_cuda_formed_deltas_switch_refuses_other_values(monkeypatch):
    """A value the switch does not take is refused, naming the variable."""
    offsets = offsets_of(128, 512, False)
    q, k, v = (random_rows((1, 512, 4, 128), torch.bfloat16, i) for i in range(3))
    out, lse = torch.ops.fibsparse.fwd(q, k, v, offsets, [128], 0.125)
    monkeypatch.setenv(SWITCH, "yes")
    with pytest.raises(RuntimeError, match=SWITCH):
        torch.ops.fibsparse.bwd(out, q, k, v, out, lse, None, offsets, [128], 0.125)
