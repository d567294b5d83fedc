"""The registered ops: torch.library.opcheck (schema, fake tensors, autograd
registration, AOT dispatch) of fwd, bwd and decode in every dtype,
torch.compile of a model using FibSparseAttention with no graph break, and the
gradients the autograd functions hand the backward (no zero dlse for an unused lse)."""
import pytest
import torch

from fibsparse_ext import FibSparseAttention, fibsparse_attn, fibsparse_attn_varlen, make_schedule
from fibsparse_ext.decode import required_capacity
from utils import DEVICES, packed, position_dtype, random_offsets, random_qkv

# fp16 and bf16 run on the tensor-core kernels on CUDA, whose backward allocates
# buffers of its own, and through float32 copies on the CPU.
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def op_samples(device, dtype):
    torch.manual_seed(0)
    samples = []
    for fractional in [False, True]:
        q, k, v = random_qkv(2, 40, 4, 2, 16, dtype, device)
        offsets = random_offsets(4, 3, 4 if fractional else None, fractional, device, position_dtype(dtype),
                                 spread=8)
        samples.append((q, k, v, offsets.requires_grad_(fractional), [4], 0.3))
    return samples


def decode_samples(device, dtype):
    """Arguments of torch.ops.fibsparse.decode: two new tokens for each of three
    sequences of different lengths, in a plain cache and in a ring that each
    sequence has wrapped by a different amount; shared integer offsets with
    int32 lengths, per-head fractional positions (-1 padded) with int64 ones."""
    torch.manual_seed(0)
    window, new, lengths = 3, 2, [30, 11, 2]
    patterns = [(torch.tensor([5, 8], dtype=torch.int32), torch.int32),
                (torch.tensor([[4.5, 8.25], [6.75, -1], [5.0, 7.5], [-1, -1]], dtype=position_dtype(dtype)),
                 torch.int64)]
    samples = []
    for ring in [False, True]:
        for offsets, lengths_dtype in patterns:
            capacity = required_capacity(window, offsets, new) if ring else max(lengths)
            q, k_cache, v_cache = random_qkv(3, new, 4, 2, 16, dtype, device, seqlen_k=capacity,
                                             requires_grad=False)
            cache_seqlens = torch.tensor(lengths, dtype=lengths_dtype, device=device)
            samples.append((q, k_cache, v_cache, cache_seqlens, offsets.to(device), [window], 0.3, ring))
    return samples


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck_forward(device, dtype):
    for args in op_samples(device, dtype):
        torch.library.opcheck(torch.ops.fibsparse.fwd.default, args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck_backward(device, dtype):
    for q, k, v, offsets, band, scale in op_samples(device, dtype):
        with torch.no_grad():
            out, lse = torch.ops.fibsparse.fwd(q, k, v, offsets, band, scale)
        dout, dlse = torch.randn_like(out), torch.randn_like(lse)
        args = (dout, q.detach(), k.detach(), v.detach(), out, lse, dlse, offsets.detach(), band, scale)
        # bwd has no derivative of its own (it raises), so skip the autograd-registration check
        torch.library.opcheck(torch.ops.fibsparse.bwd.default, args,
                              test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck_decode(device, dtype):
    for args in decode_samples(device, dtype):
        # decode is inference only: it has no derivative, and the autograd-registration
        # check refuses to run without an input that requires grad
        torch.library.opcheck(torch.ops.fibsparse.decode.default, args,
                              test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


class TinyModel(torch.nn.Module):
    def __init__(self, schedule_name):
        super().__init__()
        schedule = make_schedule(schedule_name, num_layers=2, window=8, max_distance=128)
        self.layers = torch.nn.ModuleList(FibSparseAttention(64, 4, schedule, i, num_kv_heads=2) for i in range(2))

    def forward(self, x):
        for layer in self.layers:
            x = x + layer(x)
        return x


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("schedule_name", ["stagger", "learned"])
def test_compile_has_no_graph_break(device, schedule_name):
    torch.manual_seed(0)
    model = TinyModel(schedule_name).to(device)
    x = torch.randn(2, 100, 64, device=device)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1

    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out = compiled(x)
    out.sum().backward()
    expected = model(x)
    torch.testing.assert_close(out, expected)
    if schedule_name == "learned":
        assert model.layers[0].alpha.grad is not None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_takes_offsets_as_a_python_list(device, dynamic):
    """Offsets given as Python numbers are checked as numbers, so torch.compile
    traces no data-dependent op for them (fullgraph)."""
    torch._dynamo.reset()

    def step(q):
        return fibsparse_attn(q, q, q, 4, [5, 9.5]).sum()

    q = torch.randn(1, 20, 2, 16, device=device)
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True, dynamic=dynamic)
    torch.testing.assert_close(compiled(q), step(q))
    bad = torch.compile(lambda q: fibsparse_attn(q, q, q, 4, [9, 5]), backend="aot_eager", fullgraph=True)
    with pytest.raises(Exception, match=r"strictly increasing"):  # still checked, at trace time
        bad(q)


def zero_fills_of_shape(run, shape):
    """The zero fills (aten::zero_, aten::fill_) of a tensor of `shape` while run() runs, from the profiler."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        run()
    return [event.name for event in prof.events()
            if event.name in ("aten::zero_", "aten::fill_") and event.input_shapes
            and list(event.input_shapes[0]) == list(shape)]


class _SecondOutputUnused(torch.autograd.Function):
    """Two outputs, as fwd has; autograd materializes an unused output's
    gradient as zeros by default (the check's control)."""

    @staticmethod
    def forward(ctx, x, like):
        return x * 2, like * 1

    @staticmethod
    def backward(ctx, grad_x, grad_like):
        return grad_x * 2, grad_like


@pytest.mark.parametrize("device", DEVICES)
def test_unused_lse_gets_no_zero_gradient(device):
    """A loss on the output alone leaves lse's gradient undefined, and the
    backward runs without dlse: the autograd functions (dense and packed) do
    not materialize it as a zero tensor, which every step would fill and the
    CUDA delta pass would read. The control, an autograd.Function that keeps
    materializing, shows that the check sees such a fill."""
    heads, seqlen = 3, 37
    q, k, v = random_qkv(1, seqlen, heads, heads, 16, torch.float32, device)
    offsets = random_offsets(4, 3, device=device, spread=8)
    dense_lse, packed_lse = (1, heads, seqlen), (heads, seqlen)
    like = torch.randn(dense_lse, device=device, requires_grad=True)
    x = torch.randn(5, device=device, requires_grad=True)
    assert zero_fills_of_shape(lambda: _SecondOutputUnused.apply(x, like)[0].sum().backward(), dense_lse)

    assert zero_fills_of_shape(lambda: fibsparse_attn(q, k, v, 4, offsets).sum().backward(), dense_lse) == []
    cu_seqlens, longest = packed([seqlen], device)
    packed_attn = lambda: fibsparse_attn_varlen(q[0], k[0], v[0], cu_seqlens, cu_seqlens, longest, longest, 4, offsets)
    assert zero_fills_of_shape(lambda: packed_attn().sum().backward(), packed_lse) == []
    # No dlse is the same backward as a zero one, bit for bit.
    grad = torch.randn(q.shape, device=device)
    out, lse = fibsparse_attn(q, k, v, 4, offsets, return_lse=True)
    with_zero_dlse = torch.autograd.grad([out, lse], [q, k, v], [grad, torch.zeros_like(lse)])
    without_dlse = torch.autograd.grad(fibsparse_attn(q, k, v, 4, offsets), [q, k, v], grad)
    assert all(torch.equal(a, b) for a, b in zip(with_zero_dlse, without_dlse))
