"""The dk/dv pass whose warps load their offsets' strips by TMA (one box of q
and one of dout a block, csrc/cuda/bwd_mma_kernel.cuh's dkdv_tma_strips_kernel):
that a compute capability 9.0 GPU runs it for integer offsets on dense batches
and the copying kernel elsewhere; that its gradients are bitwise those of the
copying kernel (FIBSPARSE_DKDV_TMA=0) and within the float64 reference's bounds,
for strips that start before the sequence, end past it or lie wholly outside
it, lengths that are not multiples of 64, GQA groups, per-head offsets and q
and dout whose rows are strided; and that its switch is checked."""
import pytest
import torch

from fibsparse_ext import fibsparse_attn_ref, fibsparse_attn_varlen
from fibsparse_ext.accuracy import TOLERANCE
from utils import HOPPER, cuda_kernels_of, packed, random_offsets, random_qkv, rel_err, requires_cuda

SWITCH = "FIBSPARSE_DKDV_TMA"


def requires_hopper(test):
    return pytest.mark.skipif(not HOPPER, reason="needs a compute capability 9.0 GPU and an sm_90a build")(
        requires_cuda(test))


def strided(t):
    """t's values in a tensor whose rows are twice as long (a view of its first half)."""
    wide = torch.randn(*t.shape[:-1], 2 * t.shape[-1], device=t.device, dtype=t.dtype)
    wide[..., :t.shape[-1]] = t
    return wide[..., :t.shape[-1]]


def backward_with_kernels(q, k, v, out, lse, dout, offsets, window, scale):
    return cuda_kernels_of(lambda: torch.ops.fibsparse.bwd(dout, q, k, v, out, lse, None, offsets, [window], scale))


@requires_hopper
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("batch, heads, heads_kv", [(1, 4, 4), (2, 8, 2)])
@pytest.mark.parametrize("seqlen", [1, 65, 300, 1000])
@pytest.mark.parametrize("layout", ["shared offsets", "per-head offsets", "strided rows"])
def test_dkdv_strips_by_tma_give_the_copies_bits(monkeypatch, dtype, head_dim, batch, heads, heads_kv, seqlen,
                                                 layout):
    """Offsets from 48 to ~470 (some strips past a 300-row sequence's end, at
    1 row all of them); every output poisoned before the kernels run."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    monkeypatch.delenv(SWITCH, raising=False)
    torch.manual_seed(seqlen * head_dim + heads)
    q, k, v = random_qkv(batch, seqlen, heads, heads_kv, head_dim, dtype, "cuda", requires_grad=False)
    window = 48
    offsets = random_offsets(window, 7, heads if layout == "per-head offsets" else None, False, "cuda", spread=60)
    scale = head_dim ** -0.5
    out, lse = torch.ops.fibsparse.fwd(q, k, v, offsets, [window], scale)
    dout = torch.randn_like(out)
    if layout == "strided rows":
        q, dout = strided(q), strided(dout)
    by_tma, names = backward_with_kernels(q, k, v, out, lse, dout, offsets, window, scale)
    assert any("dkdv_tma_strips_kernel" in n for n in names), names
    monkeypatch.setenv(SWITCH, "0")
    by_copies, names = backward_with_kernels(q, k, v, out, lse, dout, offsets, window, scale)
    assert not any("dkdv_tma_strips_kernel" in n for n in names) and any("dkdv_mma_kernel" in n for n in names), names
    for name, a, b in zip(["dq", "dk", "dv"], by_tma, by_copies):
        assert torch.equal(a, b), name
    if seqlen > 1:  # one key per query: cancellation noise, as the other tests say
        inputs = [t.detach().double().cpu().requires_grad_(True) for t in (q, k, v)]
        ref_out = fibsparse_attn_ref(*inputs, window, offsets.cpu(), softmax_scale=scale)
        ref = torch.autograd.grad(ref_out, inputs, dout.double().cpu())
        for name, a, r in zip(["dq", "dk", "dv"], by_tma, ref):
            assert rel_err(a.double().cpu(), r) < TOLERANCE[dtype], name


@requires_hopper
@pytest.mark.parametrize("case", ["fractional", "packed", "window alone"])
def test_dkdv_strips_by_tma_only_where_they_apply(monkeypatch, case):
    """Fractional positions, packed batches and the window alone keep the
    copying kernels."""
    monkeypatch.delenv(SWITCH, raising=False)
    q, k, v = random_qkv(1, 300, 4, 2, 64, torch.bfloat16, "cuda", requires_grad=False)
    offsets = {"fractional": torch.tensor([60.5, 150.25], device="cuda"),
               "packed": torch.tensor([60, 150], dtype=torch.int32, device="cuda"),
               "window alone": torch.zeros(0, dtype=torch.int32, device="cuda")}[case]
    if case == "packed":
        cu, longest = packed([100, 200], "cuda")
        q, k, v = q[0], k[0], v[0]

        def backward():
            qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
            out = fibsparse_attn_varlen(qg, kg, vg, cu, cu, longest, longest, 48, offsets)
            return torch.autograd.grad(out, (qg, kg, vg), torch.randn_like(out))
    else:
        out, lse = torch.ops.fibsparse.fwd(q, k, v, offsets, [48], 0.125)

        def backward():
            return torch.ops.fibsparse.bwd(torch.randn_like(out), q, k, v, out, lse, None, offsets, [48], 0.125)
    _, names = cuda_kernels_of(backward)
    assert not any("dkdv_tma_strips_kernel" in n for n in names), names
    assert any("dkdv_mma_kernel" in n for n in names), names


@requires_hopper
@pytest.mark.parametrize("setting", ["off", "", "2"])
def test_dkdv_tma_switch_is_checked(monkeypatch, setting):
    """FIBSPARSE_DKDV_TMA takes 0 or 1: any other value is refused, naming the
    variable, what it got and what it takes, before the backward runs."""
    q, k, v = random_qkv(1, 128, 2, 2, 64, torch.bfloat16, "cuda", requires_grad=False)
    offsets = torch.tensor([130], dtype=torch.int32, device="cuda")
    out, lse = torch.ops.fibsparse.fwd(q, k, v, offsets, [128], 0.125)
    monkeypatch.setenv(SWITCH, setting)
    with pytest.raises(RuntimeError, match=f"{SWITCH} must be one of 0, 1 \\(or unset\\), got '{setting}'"):
        torch.ops.fibsparse.bwd(torch.randn_like(out), q, k, v, out, lse, None, offsets, [128], 0.125)
