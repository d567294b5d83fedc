"""The backward with stored dS and offsets may run its delta pass in two parts:
the first kv group of the first sequence before the dk/dv pass, the rest
beside it (delta_rest_kernel), with the dk/dv pass's other blocks waiting for
the rest. Its gradients must be bitwise those of the one delta pass
(FIBSPARSE_DELTA_BESIDE=0), with every output and buffer poisoned first, so
that a row of delta read before it was written shows as NaN; its offsets check
must still stop a bad row of any head; and the default takes two parts only
where the first group's dk/dv blocks fill two waves of the GPU."""
import subprocess
import sys

import pytest
import torch

from fibsparse_ext.schedules import layer_offsets
from utils import cuda_kernels_of, packed, random_rows, refused_by_device_assert, requires_cuda

SWITCH = "FIBSPARSE_DELTA_BESIDE"
REST = "delta_rest_kernel"


def offsets_of(window, seqlen, fractional, heads=None):
    values = torch.tensor(layer_offsets("fibonacci", 1.0, window, seqlen), dtype=torch.float64, device="cuda")
    values = (values + 0.375).float() if fractional else values.int()
    return values if heads is None else values.expand(heads, -1).contiguous()


def starts_kernels_early():
    return torch.cuda.get_device_capability()[0] >= 9


def gradients_and_kernels(monkeypatch, setting, op, args):
    monkeypatch.setenv(SWITCH, setting)
    grads, kernels = cuda_kernels_of(lambda: op(*args)[:3])
    return grads, kernels


def assert_two_parts_bitwise_one_pass(monkeypatch, op, args):
    """op's dq, dk, dv with the delta pass in two parts and in one: equal bit
    for bit and finite, each from the kernels it names."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    if not starts_kernels_early():
        pytest.skip("the delta pass runs in two parts only where kernels start early (compute capability 9.0 on)")
    two_parts, kernels = gradients_and_kernels(monkeypatch, "1", op, args)
    assert any(REST in name for name in kernels), kernels
    one_pass, kernels = gradients_and_kernels(monkeypatch, "0", op, args)
    assert not any(REST in name for name in kernels), kernels
    for name, a, b in zip(["dq", "dk", "dv"], two_parts, one_pass):
        assert a.isfinite().all(), name
        assert torch.equal(a, b), name


@requires_cuda
@pytest.mark.parametrize("fractional", [False, True])
@pytest.mark.parametrize("batch,heads,heads_kv,head_dim", [(1, 8, 2, 128), (1, 4, 4, 64), (2, 4, 1, 64),
                                                           (3, 2, 2, 32)])
def test_cuda_delta_in_two_parts_is_bitwise_one_pass(monkeypatch, fractional, batch, heads, heads_kv, head_dim):
    """A ragged last tile, with and without a gradient of lse; several kv
    groups, or several sequences of one group, so that the rest has rows."""
    seqlen, window, dtype = 3037, 128, torch.bfloat16
    if fractional and head_dim < 128:
        pytest.skip("fractional positions take the backward with stored dS at head_dim 128 only")
    offsets = offsets_of(window, seqlen, fractional)
    q = random_rows((batch, seqlen, heads, head_dim), dtype, 1)
    k, v = (random_rows((batch, seqlen, heads_kv, head_dim), dtype, 2 + i) for i in range(2))
    scale = head_dim ** -0.5
    out, lse = torch.ops.fibsparse.fwd(q, k, v, offsets, [window], scale)
    dout, dlse = random_rows(out.shape, dtype, 7), random_rows(lse.shape, torch.float32, 8)
    for grad_lse in (dlse, None):
        assert_two_parts_bitwise_one_pass(monkeypatch, torch.ops.fibsparse.bwd,
                                          (dout, q, k, v, out, lse, grad_lse, offsets, [window], scale))


@requires_cuda
def test_cuda_packed_delta_in_two_parts_is_bitwise_one_pass(monkeypatch):
    """A packed batch (empty, one-row, one-tile and ragged sequences) with per-head
    offsets, float16: the rest holds every sequence but the first's first group."""
    lengths = [700, 1, 0, 64, 2000, 129, 63]
    cu, longest = packed(lengths, "cuda")
    window, scale, dtype = 128, 128 ** -0.5, torch.float16
    offsets = offsets_of(window, longest, False, heads=8)
    q = random_rows((sum(lengths), 8, 128), dtype, 20)
    k, v = (random_rows((sum(lengths), 2, 128), dtype, 21 + i) for i in range(2))
    out, lse = torch.ops.fibsparse.varlen_fwd(q, k, v, cu, cu, longest, longest, offsets, [window], scale)
    dout, dlse = random_rows(out.shape, dtype, 30), random_rows(lse.shape, torch.float32, 31)
    assert_two_parts_bitwise_one_pass(monkeypatch, torch.ops.fibsparse.varlen_bwd,
                                      (dout, q, k, v, out, lse, dlse, cu, cu, longest, longest, offsets, [window],
                                       scale))


@requires_cuda
@pytest.mark.parametrize("seqlen,two_parts", [(4096, False), (65536, True)])
def test_cuda_default_takes_two_parts_where_the_first_group_fills_two_waves(monkeypatch, seqlen, two_parts):
    """On an H100 or H200 (132 SMs or fewer, three dk/dv blocks an SM at
    head_dim 64) 64k keys are 1024 blocks a kv group, more than two waves;
    4k keys are 64, less than one."""
    monkeypatch.delenv(SWITCH, raising=False)
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the wave count is set for compute capability 9.0 GPUs")
    window, dtype = 128, torch.bfloat16
    offsets = offsets_of(window, seqlen, False)
    q = random_rows((1, seqlen, 2, 64), dtype, 1)
    k, v = (random_rows((1, seqlen, 2, 64), dtype, 2 + i) for i in range(2))
    out, lse = torch.ops.fibsparse.fwd(q, k, v, offsets, [window], 0.125)
    _, kernels = cuda_kernels_of(
        lambda: torch.ops.fibsparse.bwd(out, q, k, v, out, lse, None, offsets, [window], 0.125))
    assert any(REST in name for name in kernels) == two_parts, kernels


_BAD_ROW_SCRIPT = """
import os
import torch
os.environ["FIBSPARSE_DELTA_BESIDE"] = "1"
q = torch.randn(1, 300, 2, 64, device="cuda", dtype=torch.bfloat16)
offsets = torch.tensor([[8, 13, 21], {bad}], device="cuda", dtype=torch.int32)
lse = torch.zeros(1, 2, 300, device="cuda")
try:
    torch.ops.fibsparse.bwd(q, q, q, q, q, lse, None, offsets, [4], 0.125)
    torch.cuda.synchronize()
except RuntimeError as e:
    print("REFUSED", str(e).splitlines()[0])
else:
    print("ACCEPTED")
"""


@requires_cuda
@pytest.mark.parametrize("bad", [[21, 13, 8], [8, 2, 21]])
def test_cuda_delta_rest_checks_the_offsets_of_its_heads(bad):
    """Head 1's row is in the rest (MHA: the first group is head 0 alone): a
    bad row there, passed straight to the op, is stopped by the rest's check
    on the device. A device-side assert ends the CUDA context, so the case
    runs in a process of its own."""
    if not starts_kernels_early():
        pytest.skip("the delta pass runs in two parts only where kernels start early (compute capability 9.0 on)")
    result = subprocess.run([sys.executable, "-c", _BAD_ROW_SCRIPT.format(bad=bad)], capture_output=True, text=True,
                            timeout=120)
    assert refused_by_device_assert(result.stdout), result.stdout + result.stderr[-2000:]
    assert "fibsparse: offsets must be strictly increasing" in result.stderr


@requires_cuda
def test_cuda_delta_beside_switch_refuses_other_values(monkeypatch):
    """A value the switch does not take is refused, naming the variable."""
    offsets = offsets_of(128, 512, False)
    q, k, v = (random_rows((1, 512, 4, 64), torch.bfloat16, i) for i in range(3))
    out, lse = torch.ops.fibsparse.fwd(q, k, v, offsets, [128], 0.125)
    monkeypatch.setenv(SWITCH, "yes")
    with pytest.raises(RuntimeError, match=SWITCH):
        torch.ops.fibsparse.bwd(out, q, k, v, out, lse, None, offsets, [128], 0.125)
