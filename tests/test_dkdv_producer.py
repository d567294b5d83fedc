"""The dk/dv pass before dq (integer offsets, head_dim 64 and 128) in its
producer form, where a producer warp stages each ring's rows for the warps
that compute (FIBSPARSE_DKDV_PRODUCER=1, on a Hopper GPU with an sm_90a
build): bitwise the one-tile pass's gradients, dense and packed, MHA and GQA,
shared and per-head offsets, and within the float64 reference's bounds."""
import pytest
import torch

from fibsparse_ext import fibsparse_attn_ref
from fibsparse_ext.schedules import layer_offsets
from utils import HOPPER, TOLERANCE, cuda_kernels_of, packed, rel_err, requires_cuda

SWITCH = "FIBSPARSE_DKDV_PRODUCER"
PRODUCER_KERNEL = "dkdv_producer_kernel"
ONE_TILE_KERNEL = "dkdv_mma_kernel"
requires_hopper = pytest.mark.skipif(not HOPPER, reason="needs an sm_90a build on a compute capability 9.0 GPU")


def random_rows(shape, dtype, seed):
    generator = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(shape, generator=generator, device="cuda", dtype=torch.float32).to(dtype)


def fibonacci(window, seqlen):
    return torch.tensor(layer_offsets("fibonacci", 1.0, window, seqlen), dtype=torch.int32, device="cuda")


def run_backward(monkeypatch, producer, op, args):
    """op's dq, dk, dv with the producer form on or off, and the dk/dv kernel
    that ran (the producer's or the one-tile pass's)."""
    monkeypatch.setenv(SWITCH, "1" if producer else "0")
    grads, kernels = cuda_kernels_of(lambda: op(*args)[:3])
    monkeypatch.delenv(SWITCH)
    ran = [name for name in kernels if PRODUCER_KERNEL in name or ONE_TILE_KERNEL in name]
    assert len(ran) == 1, kernels
    return grads, PRODUCER_KERNEL in ran[0]


def assert_bitwise(monkeypatch, op, args):
    produced, ran_producer = run_backward(monkeypatch, True, op, args)
    one_tile, ran_producer_off = run_backward(monkeypatch, False, op, args)
    assert ran_producer and not ran_producer_off
    for name, a, b in zip(["dq", "dk", "dv"], produced, one_tile):
        assert a.isfinite().all(), name
        assert torch.equal(a, b), name


def dense_case(dtype, seqlen, heads, heads_kv, head_dim, window, offsets, seed, batch=1):
    q = random_rows((batch, seqlen, heads, head_dim), dtype, seed)
    k, v = (random_rows((batch, seqlen, heads_kv, head_dim), dtype, seed + i) for i in (1, 2))
    scale = head_dim ** -0.5
    out, lse = torch.ops.fibsparse.fwd(q, k, v, offsets, [window], scale)
    dout = random_rows(out.shape, dtype, seed + 3)
    dlse = random_rows(lse.shape, torch.float32, seed + 4)
    return q, k, v, scale, out, lse, dout, dlse


@requires_cuda
@requires_hopper
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("heads,heads_kv", [(4, 4), (8, 2)])
@pytest.mark.parametrize("window", [1, 65, 128, 129])
def test_cuda_producer_is_bitwise_the_one_tile_pass(monkeypatch, head_dim, heads, heads_kv, window):
    """dq, dk and dv bitwise the one-tile pass's, with and without a gradient
    of lse, at windows of one to three query chunks a key tile, on a sequence
    whose last key tile is ragged and whose last block holds one tile of its
    rings (so one ring has no steps); the buffers the passes write start as NaN
    (FIBSPARSE_POISON_OUTPUTS), so an element left unwritten shows."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    seqlen = 4133  # 65 key tiles, the last of 37 keys
    offsets = fibonacci(window, seqlen)
    q, k, v, scale, out, lse, dout, dlse = dense_case(torch.bfloat16, seqlen, heads, heads_kv, head_dim, window,
                                                      offsets, seed=window + head_dim + heads)
    for grad_lse in (dlse, None):
        assert_bitwise(monkeypatch, torch.ops.fibsparse.bwd,
                       (dout, q, k, v, out, lse, grad_lse, offsets, [window], scale))


@requires_cuda
@requires_hopper
def test_cuda_producer_per_head_offsets_and_float16(monkeypatch):
    """Per-head offset rows padded with -1 (a head with none), float16, a batch
    of two: bitwise the one-tile pass."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    seqlen, window, heads = 3000, 128, 8
    rows = torch.full((heads, 12), -1, dtype=torch.int32)
    for h in range(heads - 1):
        row = layer_offsets("fibonacci", 0.5 + 0.25 * h, window, seqlen)[:12]
        rows[h, :len(row)] = torch.tensor(row, dtype=torch.int32)
    offsets = rows.cuda()
    q, k, v, scale, out, lse, dout, dlse = dense_case(torch.float16, seqlen, heads, 2, 128, window, offsets, seed=5,
                                                      batch=2)
    assert_bitwise(monkeypatch, torch.ops.fibsparse.bwd, (dout, q, k, v, out, lse, dlse, offsets, [window], scale))


@requires_cuda
@requires_hopper
@pytest.mark.parametrize("head_dim", [64, 128])
def test_cuda_packed_producer_is_bitwise_the_one_tile_pass(monkeypatch, head_dim):
    """A packed batch (sequences empty, one row, one tile, ragged, odd and even
    numbers of tiles): each sequence's rings start at its own first tile."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    lengths = [3000, 1, 0, 64, 700, 129, 63, 2049, 128]
    cu, longest = packed(lengths, "cuda")
    window, scale, heads, heads_kv = 128, 0.125, 8, 2
    offsets = fibonacci(window, longest)
    q = random_rows((sum(lengths), heads, head_dim), torch.bfloat16, 40)
    k, v = (random_rows((sum(lengths), heads_kv, head_dim), torch.bfloat16, 41 + i) for i in range(2))
    out, lse = torch.ops.fibsparse.varlen_fwd(q, k, v, cu, cu, longest, longest, offsets, [window], scale)
    dout, dlse = random_rows(out.shape, torch.bfloat16, 50), random_rows(lse.shape, torch.float32, 51)
    assert_bitwise(monkeypatch, torch.ops.fibsparse.varlen_bwd,
                   (dout, q, k, v, out, lse, dlse, cu, cu, longest, longest, offsets, [window], scale))


@requires_cuda
@requires_hopper
def test_cuda_producer_against_the_reference(monkeypatch):
    """The producer form's gradients within the float64 reference's bounds:
    GQA 8/2, head_dim 128, window 128, Fibonacci offsets, bf16."""
    monkeypatch.setenv(SWITCH, "1")
    dtype, seqlen, window = torch.bfloat16, 2100, 128
    offsets = fibonacci(window, seqlen)
    q, k, v, scale, out, lse, dout, dlse = dense_case(dtype, seqlen, 8, 2, 128, window, offsets, seed=11)
    grads, kernels = cuda_kernels_of(
        lambda: torch.ops.fibsparse.bwd(dout, q, k, v, out, lse, dlse, offsets, [window], scale)[:3])
    assert any(PRODUCER_KERNEL in name for name in kernels)
    inputs = [t.double().requires_grad_() for t in (q, k, v)]
    ref_out, ref_lse = fibsparse_attn_ref(*inputs, window, offsets, softmax_scale=scale, return_lse=True)
    ref_grads = torch.autograd.grad([ref_out, ref_lse], inputs, [dout.double(), dlse.double()])
    for name, a, b in zip(["dq", "dk", "dv"], grads, ref_grads):
        assert rel_err(a, b) < TOLERANCE[dtype], name


@requires_cuda
@requires_hopper
def test_cuda_producer_switch_refuses_other_values(monkeypatch):
    """A value the switch does not know is refused, naming the variable."""
    offsets = fibonacci(128, 512)
    q, k, v, scale, out, lse, dout, dlse = dense_case(torch.bfloat16, 512, 4, 4, 128, 128, offsets, seed=3)
    monkeypatch.setenv(SWITCH, "yes")
    with pytest.raises(RuntimeError, match=SWITCH):
        torch.ops.fibsparse.bwd(dout, q, k, v, out, lse, dlse, offsets, [128], scale)
