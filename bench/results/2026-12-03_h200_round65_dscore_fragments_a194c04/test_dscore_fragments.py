"""The stored dS of the backward in the products' fragment order: gradients
bitwise those of dS stored in key rows (FIBSPARSE_DSCORE_FRAGMENTS=0), for the
window alone and with integer and fractional offsets, every head_dim, fp16
and bf16, dense and packed, GQA groups whose dq blocks take 1, 2 and 4 heads."""
import re

import pytest
import torch

from fibsparse_ext import fibsparse_attn_ref
from utils import TOLERANCE, attention_and_grads, cuda_kernels_of, packed, random_offsets, random_qkv, rel_err, \
    requires_cuda

SWITCH = "FIBSPARSE_DSCORE_FRAGMENTS"
FRAGMENTS_DQ = re.compile(r"dq_from_dscores(_with_offsets)?_kernel<[^>]*, true>")
ROWS_DQ = re.compile(r"dq_from_dscores(_with_offsets)?_kernel<[^>]*, false>")


def grads_with(monkeypatch, fragments, function):
    monkeypatch.setenv(SWITCH, "1" if fragments else "0")
    result, kernels = cuda_kernels_of(function)
    monkeypatch.delenv(SWITCH)
    assert any((FRAGMENTS_DQ if fragments else ROWS_DQ).search(k) for k in kernels), kernels
    assert not any((ROWS_DQ if fragments else FRAGMENTS_DQ).search(k) for k in kernels), kernels
    return result


def assert_bitwise(a_grads, b_grads):
    for i, (a, b) in enumerate(zip(a_grads, b_grads)):
        assert a.isfinite().all(), i
        assert torch.equal(a, b), (i, (a.float() - b.float()).abs().max().item())


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [16, 32, 64, 128])
@pytest.mark.parametrize("window", [1, 65, 128, 129])
@pytest.mark.parametrize("kind", ["window alone", "integer", "fractional"])
def test_cuda_fragments_are_bitwise_key_rows(monkeypatch, dtype, head_dim, window, kind):
    """Every gradient (of positions too) bitwise that of dS in key rows, with
    the buffers the passes write poisoned first, at windows whose bands meet
    one, two and three key tiles, on 2 sequences of 1000 rows (a ragged last
    tile), GQA 8/2."""
    if kind == "fractional" and head_dim < 128:
        pytest.skip("fractional positions take the backward with stored dS at head_dim 128 only")
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    torch.manual_seed(window + head_dim)
    q, k, v = random_qkv(2, 1000, 8, 2, head_dim, dtype, "cuda")
    if kind == "window alone":
        offsets = torch.zeros(0, dtype=torch.int32, device="cuda")
    else:
        offsets = random_offsets(window, 8, fractional=kind == "fractional", device="cuda", dtype=torch.float32)
    run = lambda: attention_and_grads(q, k, v, window, offsets, seed=7)[2:]  # noqa: E731
    assert_bitwise(grads_with(monkeypatch, True, run), grads_with(monkeypatch, False, run))


@requires_cuda
@pytest.mark.parametrize("heads, heads_kv", [(4, 4), (8, 4), (8, 2)])
def test_cuda_fragments_dq_blocks_of_several_heads(monkeypatch, heads, heads_kv):
    """dq blocks of 1, 2 and 4 heads of a kv group (head_dim 64, shared
    integer offsets): bitwise dS in key rows."""
    torch.manual_seed(heads + heads_kv)
    q, k, v = random_qkv(1, 3000, heads, heads_kv, 64, torch.bfloat16, "cuda")
    offsets = random_offsets(128, 10, device="cuda")
    run = lambda: attention_and_grads(q, k, v, 128, offsets, seed=3)[2:]  # noqa: E731
    assert_bitwise(grads_with(monkeypatch, True, run), grads_with(monkeypatch, False, run))


@requires_cuda
@pytest.mark.parametrize("kind", ["window alone", "integer"])
def test_cuda_packed_fragments_are_bitwise_key_rows(monkeypatch, kind):
    """A packed batch (sequences empty, of one row, of one tile, ragged): each
    sequence's dS tiles at its own first tile; bitwise dS in key rows."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    lengths = [5000, 1, 0, 64, 900, 4097, 63, 1234, 128]
    cu, longest = packed(lengths, "cuda")
    torch.manual_seed(5)
    q, k, v = (torch.randn(sum(lengths), 4, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    offsets = (torch.zeros(0, dtype=torch.int32, device="cuda") if kind == "window alone"
               else random_offsets(128, 8, device="cuda"))
    scale = 0.125

    def run():
        out, lse = torch.ops.fibsparse.varlen_fwd(q, k, v, cu, cu, longest, longest, offsets, [128], scale)
        generator = torch.Generator(device="cuda").manual_seed(9)
        dout = torch.randn(out.shape, generator=generator, device="cuda").to(out.dtype)
        dlse = torch.randn(lse.shape, generator=generator, device="cuda")
        return torch.ops.fibsparse.varlen_bwd(dout, q, k, v, out, lse, dlse, cu, cu, longest, longest, offsets,
                                              [128], scale)[:3]

    assert_bitwise(grads_with(monkeypatch, True, run), grads_with(monkeypatch, False, run))


@requires_cuda
@pytest.mark.parametrize("kind", ["window alone", "integer"])
def test_cuda_fragments_against_the_reference(kind):
    """The default (fragment order) within the float64 reference's bounds."""
    dtype, head_dim, window = torch.bfloat16, 64, 128
    torch.manual_seed(1)
    q, k, v = random_qkv(2, 1000, 4, 2, head_dim, dtype, "cuda")
    offsets = (torch.zeros(0, dtype=torch.int32, device="cuda") if kind == "window alone"
               else random_offsets(window, 9, device="cuda"))
    (grads, kernels) = cuda_kernels_of(lambda: attention_and_grads(q, k, v, window, offsets, seed=2))
    assert any(FRAGMENTS_DQ.search(name) for name in kernels), kernels
    inputs = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref_out, ref_lse = fibsparse_attn_ref(*inputs, window, offsets, return_lse=True)
    generator = torch.Generator(device="cuda").manual_seed(2)
    grad_out = torch.randn(ref_out.shape, generator=generator, device="cuda", dtype=dtype)
    grad_lse = torch.randn(ref_lse.shape, generator=generator, device="cuda", dtype=torch.float32)
    ref_grads = torch.autograd.grad([ref_out, ref_lse], inputs, [grad_out.double(), grad_lse.double()])
    for name, a, b in zip(["dq", "dk", "dv"], grads[2:5], ref_grads):
        assert rel_err(a, b) < TOLERANCE[dtype], name


@requires_cuda
@pytest.mark.parametrize("setting", ["off", "", "2"])
def test_cuda_fragments_switch_is_checked(monkeypatch, setting):
    """FIBSPARSE_DSCORE_FRAGMENTS takes 0 or 1: any other value is refused
    before the backward launches any kernel."""
    q, k, v = (torch.randn(1, 128, 2, 64, device="cuda", dtype=torch.float16) for _ in range(3))
    none = torch.zeros(0, dtype=torch.int32, device="cuda")
    out, lse = torch.ops.fibsparse.fwd(q, k, v, none, [128], 0.125)
    dout, dlse = torch.randn_like(out), torch.zeros_like(lse)
    torch.cuda.synchronize()
    monkeypatch.setenv(SWITCH, setting)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        with pytest.raises(RuntimeError, match=f"{SWITCH} must be one of 0, 1 \\(or unset\\), got '{setting}'"):
            torch.ops.fibsparse.bwd(dout, q, k, v, out, lse, dlse, none, [128], 0.125)
        torch.cuda.synchronize()
    launched = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert not any("fibsparse" in name for name in launched), launched
