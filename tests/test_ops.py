"""The registered ops: torch.library.opcheck (schema, fake tensors, autograd
registration) and torch.compile of a model using FibSparseAttention with no
graph break."""
import pytest
import torch

from fibsparse_ext import FibSparseAttention, make_schedule
from utils import DEVICES, random_offsets, random_qkv


def op_samples(device):
    torch.manual_seed(0)
    samples = []
    for dtype in [torch.float32, torch.float64]:
        for fractional in [False, True]:
            q, k, v = random_qkv(2, 40, 4, 2, 16, dtype, device)
            offsets = random_offsets(4, 3, 4 if fractional else None, fractional, device, dtype, spread=8)
            samples.append((q, k, v, offsets.requires_grad_(fractional), 4, 0.3))
    return samples


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_forward(device):
    for args in op_samples(device):
        torch.library.opcheck(torch.ops.fibsparse.fwd.default, args)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_backward(device):
    for q, k, v, offsets, window, scale in op_samples(device):
        with torch.no_grad():
            out, lse = torch.ops.fibsparse.fwd(q, k, v, offsets, window, scale)
        dout, dlse = torch.randn_like(out), torch.randn_like(lse)
        args = (dout, q.detach(), k.detach(), v.detach(), out, lse, dlse, offsets.detach(), window, scale)
        # bwd has no derivative of its own (it raises), so skip the autograd-registration check
        torch.library.opcheck(torch.ops.fibsparse.bwd.default, args,
                              test_utils=("test_schema", "test_faketensor"))


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
