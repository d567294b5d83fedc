"""CUDA-only properties: every output element written, bitwise determinism,
the current stream, long sequences, and sizes past 32-bit index math."""
import pytest
import torch

from fibsparse_ext import fibsparse_attn, fibsparse_attn_ref
from fibsparse_ext.decode import fibsparse_attn_with_kvcache
from utils import random_offsets, random_qkv, rel_err, requires_cuda

pytestmark = requires_cuda


def attention_and_grads(q, k, v, window, offsets, seed=0):
    offsets = offsets.detach().requires_grad_(offsets.is_floating_point())
    out, lse = fibsparse_attn(q, k, v, window, offsets, return_lse=True)
    generator = torch.Generator(device=q.device).manual_seed(seed)
    grad_out = torch.randn(out.shape, generator=generator, device=q.device, dtype=out.dtype)
    grad_lse = torch.randn(lse.shape, generator=generator, device=q.device, dtype=lse.dtype)
    inputs = [q, k, v] + ([offsets] if offsets.requires_grad else [])
    grads = torch.autograd.grad([out, lse], inputs, [grad_out, grad_lse])
    return [out, lse, *grads]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("fractional", [False, True])
@pytest.mark.parametrize("seqlen", [1, 37, 301])
def test_every_output_element_is_written(monkeypatch, dtype, fractional, seqlen):
    """Outputs are NaN-filled before the kernels run (FIBSPARSE_POISON_OUTPUTS=1);
    any element a kernel skips stays NaN. Window > seqlen and keys read by no
    query (the tail rows) are included."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    q, k, v = random_qkv(2, seqlen, 4, 2, 64, dtype, "cuda")
    offsets = random_offsets(16, 5, 4, fractional, "cuda", torch.float32)
    for name, t in zip(["out", "lse", "dq", "dk", "dv", "doffsets"], attention_and_grads(q, k, v, 16, offsets)):
        assert torch.isfinite(t).all(), f"{name} has unwritten (NaN) elements"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
@pytest.mark.parametrize("head_dim", [16, 128])
def test_decode_writes_every_output_element(monkeypatch, dtype, head_dim):
    """The decode kernel's merge of its lane groups writes every element of out
    and lse, for one and for several new tokens, in a wrapped ring."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    for new in (1, 3):
        q, k_cache, v_cache = random_qkv(3, new, 4, 2, head_dim, dtype, "cuda", seqlen_k=40, requires_grad=False)
        lengths = torch.tensor([new, 77, 1000], device="cuda")
        out, lse = fibsparse_attn_with_kvcache(q, k_cache, v_cache, lengths, 8, [9, 20, 30], ring=True,
                                               return_lse=True)
        assert torch.isfinite(out).all() and torch.isfinite(lse).all(), new


def test_no_queries_launches_nothing():
    q, k, v = random_qkv(1, 0, 1, 1, 16, torch.float32, "cuda", seqlen_k=4)
    out, lse = fibsparse_attn(q, k, v, 2, [5], return_lse=True)
    assert out.shape == q.shape and lse.shape == (1, 1, 0)
    dq, dk, dv = torch.autograd.grad(out.sum(), [q, k, v], allow_unused=True)
    assert dk is None or torch.equal(dk, torch.zeros_like(k))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("fractional", [False, True])
def test_backward_is_bitwise_deterministic(dtype, fractional):
    q, k, v = random_qkv(2, 1000, 8, 2, 128, dtype, "cuda")
    offsets = random_offsets(64, 7, None, fractional, "cuda", torch.float64 if dtype == torch.float64 else torch.float32)
    first = attention_and_grads(q, k, v, 64, offsets)
    for _ in range(2):
        again = attention_and_grads(q, k, v, 64, offsets)
        for a, b in zip(first, again):
            assert torch.equal(a, b)


def test_runs_on_the_current_stream():
    """The op's kernels wait for work queued before them on the current stream:
    its inputs are produced on a side stream that is kept busy first, so a
    kernel launched on any other stream would read them unfinished. The op is
    called directly, with its offsets ready, so that nothing synchronizes."""
    q, k, v = random_qkv(1, 2048, 4, 4, 64, torch.float16, "cuda", requires_grad=False)
    offsets = torch.tensor([128, 256, 512], dtype=torch.int32, device="cuda")
    expected, _ = torch.ops.fibsparse.fwd(q, k, v, offsets, 128, 0.125)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.cuda._sleep(50_000_000)  # ~tens of ms of GPU time on this stream
        q2, k2, v2 = q * 1, k * 1, v * 1  # ready only after the sleep
        out, _ = torch.ops.fibsparse.fwd(q2, k2, v2, offsets, 128, 0.125)
    torch.cuda.current_stream().wait_stream(stream)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("fractional", [False, True])
def test_long_sequence_matches_reference(dtype, fractional):
    """seqlen 16384, window 128, Fibonacci offsets up to 4096, against the float64 reference."""
    torch.manual_seed(0)
    q, k, v = random_qkv(1, 16384, 4, 2, 64, dtype, "cuda")
    offsets = torch.tensor([144, 233, 377, 610, 987, 1597, 2584, 4181], device="cuda")
    offsets = offsets.float() * 0.93 if fractional else offsets.int()
    out_and_grads = attention_and_grads(q, k, v, 128, offsets)
    ref_in = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    ref_pos = offsets.detach().double().requires_grad_(fractional) if fractional else offsets
    ref_out, ref_lse = fibsparse_attn_ref(*ref_in, 128, ref_pos, return_lse=True)
    generator = torch.Generator(device="cuda").manual_seed(0)
    grad_out = torch.randn(ref_out.shape, generator=generator, device="cuda", dtype=q.dtype).double()
    grad_lse = torch.randn(ref_lse.shape, generator=generator, device="cuda", dtype=torch.float32).double()
    ref_grads = torch.autograd.grad([ref_out, ref_lse], ref_in + ([ref_pos] if fractional else []),
                                    [grad_out, grad_lse])
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    for name, a, b in zip(["out", "lse", "dq", "dk", "dv", "doffsets"], out_and_grads, [ref_out, ref_lse, *ref_grads]):
        assert rel_err(a, b) < tol, name


def test_more_than_2_pow_31_elements():
    """batch * heads * seqlen * head_dim > 2^31: offsets into q, k, v must be 64-bit."""
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2**30:
        pytest.skip("needs 24 GB of free GPU memory")
    batch, seqlen, heads, head_dim = 1, 2**18 + 64, 64, 128  # 2^31 + 2^19 elements per tensor
    q = torch.randn(batch, seqlen, heads, head_dim, device="cuda", dtype=torch.bfloat16)
    k, v = torch.randn_like(q[:, :, :1]), torch.randn_like(q[:, :, :1])  # MQA keeps memory small
    assert q.numel() > 2**31
    out = fibsparse_attn(q, k, v, 4, [8, 64])
    # The last rows of the last head live past 2^31: check them against the reference.
    tail = slice(seqlen - 70, seqlen)
    ref = fibsparse_attn_ref(q[:, tail, -2:].double(), k.double(), v.double(), 4, [8, 64])
    assert rel_err(out[:, tail, -2:], ref) < 1e-2
