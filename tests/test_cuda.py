"""The kernels as CUDA launches: every output element written, bitwise
determinism, the current stream, empty input, and sizes past 32-bit index math.
(Their accuracy on CUDA is tested with the CPU's, in test_kernels.py.)"""
import pytest
import torch

from fibsparse_ext import fibsparse_attn, fibsparse_attn_ref
from fibsparse_ext.decode import fibsparse_attn_with_kvcache
from utils import CUDA_ONLY, attention_and_grads, random_offsets, random_qkv, rel_err

pytestmark = CUDA_ONLY


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("fractional", [False, True])
@pytest.mark.parametrize("seqlen", [1, 37, 301])
@pytest.mark.parametrize("per_head", [True, False])
def test_every_output_element_is_written(monkeypatch, dtype, fractional, seqlen, per_head):
    """Outputs are NaN-filled before the kernels run (FIBSPARSE_POISON_OUTPUTS=1);
    any element a kernel skips stays NaN. Window > seqlen and keys read by no
    query (the tail rows) are included; shared offsets run the GQA heads on
    tensor-core blocks of several heads."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    q, k, v = random_qkv(2, seqlen, 4, 2, 64, dtype, "cuda")
    offsets = random_offsets(16, 5, 4 if per_head else None, fractional, "cuda", torch.float32)
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
    expected, _ = torch.ops.fibsparse.fwd(q, k, v, offsets, [128], 0.125)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.cuda._sleep(50_000_000)  # ~tens of ms of GPU time on this stream
        q2, k2, v2 = q * 1, k * 1, v * 1  # ready only after the sleep
        out, _ = torch.ops.fibsparse.fwd(q2, k2, v2, offsets, [128], 0.125)
    torch.cuda.current_stream().wait_stream(stream)
    assert torch.equal(out, expected)


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
