"""torch.autograd.gradcheck in float64 through fibsparse_attn, on every device
that has a float64 kernel: q, k, v, and fractional positions."""
import pytest
import torch

from fibsparse_ext import fibsparse_attn
from utils import DEVICES, random_offsets, random_qkv


def gradcheck_attention(device, fractional, per_head, heads=2, heads_kv=1, seqlen=23, window=3, head_dim=16):
    torch.manual_seed(7)
    q, k, v = random_qkv(2, seqlen, heads, heads_kv, head_dim, torch.float64, device)
    offsets = random_offsets(window, 3, heads if per_head else None, fractional, device, torch.float64, spread=6)
    inputs = [q, k, v]
    if fractional:
        # Keep positions away from integers, where d/dp is one-sided.
        offsets = (offsets.floor() + 0.25 + 0.5 * torch.rand_like(offsets)).requires_grad_(True)
        inputs.append(offsets)

    def attention(*args):
        pos = args[3] if fractional else offsets
        out, lse = fibsparse_attn(*args[:3], window, pos, return_lse=True)
        return out, lse  # both outputs, so the lse gradient path is checked too

    assert torch.autograd.gradcheck(attention, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fractional", [False, True], ids=["integer", "fractional"])
@pytest.mark.parametrize("per_head", [False, True], ids=["shared", "per_head"])
def test_gradcheck(device, fractional, per_head):
    gradcheck_attention(device, fractional, per_head)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_window_longer_than_sequence(device):
    gradcheck_attention(device, True, False, heads=1, heads_kv=1, seqlen=5, window=8)


@pytest.mark.parametrize("device", DEVICES)
def test_gradgrad_is_not_silently_wrong(device):
    """Double backward is not implemented; it must say so rather than return zeros."""
    q, k, v = random_qkv(1, 8, 1, 1, 16, torch.float64, device)
    out = fibsparse_attn(q, k, v, 2, [3, 5])
    (dq,) = torch.autograd.grad(out.sum(), q, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(dq.sum(), k)
