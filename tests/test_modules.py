"""FibSparseAttention: forward/backward for every schedule, learned alpha gets
a gradient, GQA, and that the layer computes exactly fibsparse_attn on its
own projections."""
import pytest
import torch

from fibsparse_ext import SCHEDULES, FibSparseAttention, fibsparse_attn_ref, make_schedule
from fibsparse_ext.rotary import apply_rotary, rotary_tables
from utils import DEVICES, packed, rel_err


def schedule_for(name, base="fibonacci"):
    if name == "dense":  # no window and no base
        return make_schedule(name, num_layers=4, max_distance=200)
    kwargs = dict(num_layers=4, window=8, max_distance=200, base=base)
    if name == "custom":
        kwargs["alphas"] = [0.7, 1.0, 1.3, 0.9]
    return make_schedule(name, **kwargs)


def layer(name, device, dtype=torch.float64, num_kv_heads=2, base="fibonacci", layer_idx=1):
    torch.manual_seed(3)
    return FibSparseAttention(64, 4, schedule_for(name, base), layer_idx, num_kv_heads=num_kv_heads).to(
        device=device, dtype=dtype)


def reference_forward(module, x):
    """The layer recomputed from its parameters with the reference attention."""
    batch, seqlen, _ = x.shape
    q, k, v = module.qkv(x).view(batch, seqlen, -1, module.head_dim).split(
        [module.num_heads, module.num_kv_heads, module.num_kv_heads], dim=2)
    cos, sin = rotary_tables(torch.arange(seqlen, device=x.device), module.head_dim, module.rotary_base)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    out = fibsparse_attn_ref(q, k, v, module.window, module.positions())
    return module.out_proj(out.reshape(batch, seqlen, -1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("base", ["fibonacci", "pow2"])
@pytest.mark.parametrize("name", [s for s in SCHEDULES if s != "dense"])
def test_layer_matches_reference(device, name, base):
    module = layer(name, device, base=base)
    x = torch.randn(2, 150, 64, dtype=torch.float64, device=device)
    assert rel_err(module(x), reference_forward(module, x)) < 1e-12


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", SCHEDULES)
def test_forward_backward_every_parameter_gets_a_gradient(device, name):
    module = layer(name, device, dtype=torch.float32)
    x = torch.randn(2, 100, 64, device=device, requires_grad=True)
    out = module(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    for param_name, param in list(module.named_parameters()) + [("x", x)]:
        assert param.grad is not None and torch.isfinite(param.grad).all(), param_name
        assert param.grad.abs().sum() > 0, param_name


@pytest.mark.parametrize("device", DEVICES)
def test_learned_alpha_gradient_matches_reference(device):
    """d loss / d alpha through the kernels equals autograd through the reference."""
    module = layer("learned", device)
    assert isinstance(module.alpha, torch.nn.Parameter)
    x = torch.randn(1, 300, 64, dtype=torch.float64, device=device)
    (module(x) ** 2).sum().backward()
    kernel_grad = module.alpha.grad.clone()
    module.alpha.grad = None
    (reference_forward(module, x) ** 2).sum().backward()
    assert kernel_grad.abs() > 0
    assert rel_err(kernel_grad, module.alpha.grad) < 1e-10


def test_learned_alpha_moves_under_training():
    module = layer("learned", "cpu", dtype=torch.float32)
    start = module.alpha.item()
    optimizer = torch.optim.SGD([module.alpha], lr=0.5)
    x = torch.randn(2, 200, 64)
    for _ in range(3):
        optimizer.zero_grad()
        module(x).square().mean().backward()
        optimizer.step()
    assert module.alpha.item() != start


@pytest.mark.parametrize("device", DEVICES)
def test_dense_is_causal_attention(device):
    """The baseline layer: output at position i does not depend on later inputs."""
    module = layer("dense", device)
    x = torch.randn(1, 40, 64, dtype=torch.float64, device=device)
    y = x.clone()
    y[:, 30:] = torch.randn_like(y[:, 30:])
    assert torch.equal(module(x)[:, :30], module(y)[:, :30])
    assert not torch.equal(module(x)[:, 30:], module(y)[:, 30:])


def test_offsets_do_not_depend_on_sequence_length():
    """The pattern reads fixed distances: running at 4x the length only looks at the same distances."""
    module = layer("stagger", "cpu")
    x = torch.randn(1, 800, 64, dtype=torch.float64)
    short = module(x[:, :200])
    assert rel_err(module(x)[:, :200], short) < 1e-12
    assert int(module.offsets.max()) <= 200


def test_extra_repr_names_the_pattern():
    text = repr(layer("coprime", "cpu"))
    assert "window=8" in text and "coprime/fibonacci" in text


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["stagger", "learned", "dense"])
def test_packed_documents_equal_each_document_alone(device, name):
    """x (1, total, embed) with cu_seqlens: every document's rows (rotary
    positions restarting at its start) and every parameter gradient are those
    of the documents run one by one."""
    module = layer(name, device)
    lengths = [10, 0, 1, 37, 64]
    cu, longest = packed(lengths, device)
    x = torch.randn(1, sum(lengths), 64, dtype=torch.float64, device=device)
    grad = torch.randn_like(x)
    out = module(x, cu_seqlens=cu, max_seqlen=longest)
    packed_grads = torch.autograd.grad((out * grad).sum(), list(module.parameters()))
    bounds = cu.tolist()
    alone = torch.cat([module(x[:, bounds[b]:bounds[b + 1]]) for b in range(len(lengths)) if lengths[b]], 1)
    alone_grads = torch.autograd.grad((alone * grad).sum(), list(module.parameters()))
    assert rel_err(out, alone) < 1e-12
    for a, b in zip(packed_grads, alone_grads):
        assert rel_err(a, b) < 1e-12


def test_packed_documents_need_a_single_row_and_max_seqlen():
    module = layer("stagger", "cpu")
    cu = torch.tensor([0, 3, 8], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"x of shape \(1, total, embed_dim\) and max_seqlen"):
        module(torch.randn(2, 8, 64, dtype=torch.float64), cu_seqlens=cu, max_seqlen=5)
    with pytest.raises(ValueError, match=r"max_seqlen"):
        module(torch.randn(1, 8, 64, dtype=torch.float64), cu_seqlens=cu)
    with pytest.raises(ValueError, match=r"sequence 1 \(seqlen_q 5, seqlen_k 5\) is longer than max_seqlen_q 4"):
        module(torch.randn(1, 8, 64, dtype=torch.float64), cu_seqlens=cu, max_seqlen=4)
