"""Bad input (docs/semantics.md): every bad input is a ValueError/RuntimeError whose message
names the argument and what was expected; never a crash or a wrong answer."""
import pytest
import torch

from fibsparse_ext import fibsparse_attn, fibsparse_attn_ref
from utils import requires_cuda

ATTENTION_FUNCTIONS = [fibsparse_attn, fibsparse_attn_ref]


def qkv(batch=1, seqlen=12, heads=2, heads_kv=2, head_dim=16, dtype=torch.float32, device="cpu"):
    torch.manual_seed(0)
    return (torch.randn(batch, seqlen, heads, head_dim, dtype=dtype, device=device),
            torch.randn(batch, seqlen, heads_kv, head_dim, dtype=dtype, device=device),
            torch.randn(batch, seqlen, heads_kv, head_dim, dtype=dtype, device=device))


def raises(fn, *args, match, **kwargs):
    with pytest.raises((ValueError, RuntimeError), match=match):
        fn(*args, **kwargs)


@pytest.mark.parametrize("fn", ATTENTION_FUNCTIONS)
@pytest.mark.parametrize("window", [0, -3, 2.5, True, None])
def test_window(fn, window):
    raises(fn, *qkv(), window, [4], match="window")


@pytest.mark.parametrize("fn", ATTENTION_FUNCTIONS)
@pytest.mark.parametrize("offsets,match", [
    ([5, 4], "strictly increasing"),
    ([5, 5], "strictly increasing"),
    ([2, 5], "window"),               # integer distance inside the band (window 4)
    ([-2, 5], "non-negative"),
    ([5, -1, 9], "padding"),
    ([4.5, float("nan")], "finite"),
    ([-0.5, 3.0], "non-negative"),
    ([[5, 8]], "heads"),              # per-head rows but 1 row for 2 heads
    (torch.full((1, 1, 1), 5), r"\(K,\) or \(heads, K\)"),
    (7, "sequence"),
    (["a"], "ints"),
    ([[5, 8], [6]], "pad"),
])
def test_offsets_values_and_shape(fn, offsets, match):
    raises(fn, *qkv(), 4, offsets, match="offsets|heads")
    raises(fn, *qkv(), 4, offsets, match=match)


@pytest.mark.parametrize("fn", ATTENTION_FUNCTIONS)
def test_offsets_dtype(fn):
    raises(fn, *qkv(), 4, torch.tensor([5, 9]) > 0, match="offsets")


@pytest.mark.parametrize("fn", ATTENTION_FUNCTIONS)
def test_inputs_for_every_path(fn):
    """The reference checks its inputs like the kernels do."""
    q, k, v = qkv()
    raises(fn, q, k.double(), v, 4, [5], match="k must have q's dtype")
    raises(fn, q, k, v.half(), 4, [5], match="v must have q's dtype")
    raises(fn, q.int(), k.int(), v.int(), 4, [5], match="q must be float16, bfloat16, float32")
    raises(fn, q, k, v, 4, [5], softmax_scale=float("inf"), match="softmax_scale")
    raises(fn, q, *qkv(batch=2)[1:], 4, [5], match="batch")
    raises(fn, q, *qkv(head_dim=32)[1:], 4, [5], match="head_dim")
    raises(fn, *qkv(head_dim=0), 4, [5], match="head_dim")
    raises(fn, q, k[:, :, :0], v[:, :, :0], 4, [5], match="heads_kv")


def test_huge_window_is_cheap_and_exact():
    """A window beyond the sequence (a way to ask for dense attention) costs
    nothing extra and equals causal attention."""
    q, k, v = qkv(dtype=torch.float64)
    out = fibsparse_attn(q, k, v, 2**31 - 1, [])
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True).transpose(1, 2)
    assert (out - expected).abs().max() < 1e-12
    assert (fibsparse_attn_ref(q, k, v, 2**31 - 1, []) - expected).abs().max() < 1e-12


def test_int64_offsets_beyond_int32_are_refused_by_the_op():
    q, k, v = qkv()
    raises(torch.ops.fibsparse.fwd, q, k, v, torch.tensor([5, 2**32 + 5]), [4], 0.25,
           match=rf"offsets must be distances .*got values in \[5, {2**32 + 5}\]")


def test_backward_op_names_the_bad_tensor():
    """torch.ops.fibsparse.bwd checks each tensor itself, for callers that skip
    autograd, and says which one is wrong and what it got."""
    q, k, v = qkv()
    offsets = torch.tensor([5], dtype=torch.int32)
    out, lse = torch.ops.fibsparse.fwd(q, k, v, offsets, [4], 0.25)
    dout = torch.randn_like(out)
    bwd = torch.ops.fibsparse.bwd
    raises(bwd, dout.double(), q, k, v, out, lse, None, offsets, [4], 0.25,
           match=r"dout must have q's dtype Float, got Double")
    raises(bwd, dout, q, k, v, out.half(), lse, None, offsets, [4], 0.25, match=r"out must have q's dtype Float, got Half")
    raises(bwd, dout, q, k, v, out, lse, lse[:, :1], offsets, [4], 0.25, match=r"dlse must match lse .*, got \[1, 1, 12\]")
    raises(bwd, dout, q, k[:, :, :0], v[:, :, :0], out, lse, None, offsets, [4], 0.25,
           match=r"q's heads \(2\) must be a multiple of k's heads_kv \(0\)")


def test_shapes():
    q, k, v = qkv()
    raises(fibsparse_attn, q[0], k, v, 4, [5], match="q must have shape")
    raises(fibsparse_attn, q, k[0], v, 4, [5], match="k must have shape")
    raises(fibsparse_attn, q, k, v[:, :5], 4, [5], match="v must have the shape of k")
    raises(fibsparse_attn, q, *qkv(batch=2)[1:], 4, [5], match="batch")
    raises(fibsparse_attn, q, *qkv(head_dim=32)[1:], 4, [5], match="head_dim")
    raises(fibsparse_attn, *qkv(heads=3, heads_kv=2), 4, [5], match="multiple of k's heads_kv")
    q_long = qkv(seqlen=20)[0]
    raises(fibsparse_attn, q_long, k, v, 4, [5], match="seqlen_q")


def test_dtypes():
    q, k, v = qkv()
    raises(fibsparse_attn, q, k.double(), v, 4, [5], match="k must have q's dtype")
    raises(fibsparse_attn, q, k, v.half(), 4, [5], match="v must have q's dtype")
    raises(fibsparse_attn, q.int(), k.int(), v.int(), 4, [5], match="q must be float16, bfloat16, float32")


def test_softmax_scale():
    raises(fibsparse_attn, *qkv(), 4, [5], softmax_scale=float("inf"), match="softmax_scale")


def test_cpu_head_dim_limit():
    raises(fibsparse_attn, *qkv(head_dim=2048), 4, [5], match="head_dim")


@requires_cuda
def test_cuda_devices():
    q, k, v = qkv(device="cuda")
    raises(fibsparse_attn, q, k.cpu(), v, 4, [5], match="k must be on q's device")
    raises(fibsparse_attn, q, k, v.cpu(), 4, [5], match="v must be on q's device")
    raises(fibsparse_attn, q, k, v, 4, torch.tensor([5, 9]), match="offsets must be on q's device")
    raises(fibsparse_attn, *qkv(head_dim=48, device="cuda"), 4, [5], match="head_dim must be 16, 32, 64 or 128")


@requires_cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_cuda_tensors_on_different_gpus():
    q, k, v = qkv(device="cuda:0")
    raises(fibsparse_attn, q, k.to("cuda:1"), v, 4, [5], match="k must be on q's device")


def test_module_arguments():
    from fibsparse_ext import FibSparseAttention, make_schedule
    schedule = make_schedule("fixed", num_layers=2, window=4, max_distance=64)
    raises(FibSparseAttention, 30, 4, schedule, 0, match="embed_dim")
    raises(FibSparseAttention, 32, 4, schedule, 0, num_kv_heads=3, match="num_kv_heads")
    raises(FibSparseAttention, 32, 4, schedule, 2, match="layer_idx")


def test_offsets_tensor_changed_in_place_is_checked_again():
    """Valid offset tensors are checked once per version (no host sync on
    reuse); an in-place change must bring the check back."""
    q, k, v = qkv(seqlen=20)
    offsets = torch.tensor([5, 9])
    fibsparse_attn(q, k, v, 4, offsets)
    offsets[1] = 3
    with pytest.raises(ValueError, match="increasing"):
        fibsparse_attn(q, k, v, 4, offsets)
    with pytest.raises(ValueError, match="increasing"):  # and again: a refused tensor is not remembered
        fibsparse_attn(q, k, v, 4, offsets)


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("band, match", [([4, 2], r"band must be \[window\], got \[4, 2\]"),
                                         ([], r"band must be \[window\], got \[\]"),
                                         ([0], r"window must be .*got .*0")])
def test_op_names_a_bad_band(device, band, match):
    """The ops take the band's parameters as one list (`band`, [window]); the
    real op and its fake (meta) refuse the same lists, naming the argument."""
    q, k, v = qkv(device=device)
    raises(torch.ops.fibsparse.fwd, q, k, v, torch.tensor([5], dtype=torch.int32, device=device), band, 0.25,
           match=match)


def test_python_and_the_op_take_the_same_largest_window():
    """The entry point and the op agree on the largest window (2^62 - 1): the
    largest one passes both, one more is refused by both."""
    from fibsparse_ext._offsets import MAX_WINDOW
    q, k, v = qkv()
    offsets = torch.tensor([], dtype=torch.int32)
    fibsparse_attn(q, k, v, MAX_WINDOW, offsets)
    torch.ops.fibsparse.fwd(q, k, v, offsets, [MAX_WINDOW], 0.25)
    raises(fibsparse_attn, q, k, v, MAX_WINDOW + 1, offsets, match="window must be")
    raises(torch.ops.fibsparse.fwd, q, k, v, offsets, [MAX_WINDOW + 1], 0.25, match="window is too large")
