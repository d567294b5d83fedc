"""The dq pass with offsets from stored dS starts a kv group's blocks of one
query tile one after another (so that the strips of k rows one stages are in
L2 for the others): dq is bitwise that of blocks started in the order tile,
then head (FIBSPARSE_DQ_GROUP_ORDER=0), dense and packed, with one row of
offsets for a group's heads (blocks of several heads) and with a row per head
(a block per head)."""
import pytest
import torch

from fibsparse_ext.schedules import layer_offsets
from utils import packed, random_rows, requires_cuda

SWITCH = "FIBSPARSE_DQ_GROUP_ORDER"


def offsets_of(window, seqlen, heads=None):
    values = torch.tensor(layer_offsets("fibonacci", 1.0, window, seqlen), dtype=torch.int32, device="cuda")
    if heads is None:
        return values
    # A row per head, each shifted (still increasing, still past the window).
    return torch.stack([values + 3 * h for h in range(heads)])


def assert_bitwise_in_both_orders(monkeypatch, op, args):
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    monkeypatch.delenv(SWITCH, raising=False)
    grouped = op(*args)[:3]
    monkeypatch.setenv(SWITCH, "0")
    tile_first = op(*args)[:3]
    for name, a, b in zip(["dq", "dk", "dv"], grouped, tile_first):
        assert a.isfinite().all(), name
        assert torch.equal(a, b), name


@requires_cuda
@pytest.mark.parametrize("per_head_offsets", [False, True])
@pytest.mark.parametrize("heads,heads_kv,head_dim", [(8, 2, 128), (16, 2, 128), (12, 4, 64), (6, 2, 32)])
def test_cuda_dq_group_order_is_bitwise_tile_order(monkeypatch, per_head_offsets, heads, heads_kv, head_dim):
    seqlen, window, dtype = 2100, 128, torch.bfloat16
    offsets = offsets_of(window, seqlen, heads if per_head_offsets else None)
    q = random_rows((2, seqlen, heads, head_dim), dtype, 1)
    k, v = (random_rows((2, seqlen, heads_kv, head_dim), dtype, 2 + i) for i in range(2))
    scale = head_dim ** -0.5
    out, lse = torch.ops.fibsparse.fwd(q, k, v, offsets, [window], scale)
    dout = random_rows(out.shape, dtype, 7)
    assert_bitwise_in_both_orders(monkeypatch, torch.ops.fibsparse.bwd,
                                  (dout, q, k, v, out, lse, None, offsets, [window], scale))


@requires_cuda
def test_cuda_packed_dq_group_order_is_bitwise_tile_order(monkeypatch):
    lengths = [700, 1, 0, 64, 2000, 129, 63]
    cu, longest = packed(lengths, "cuda")
    window, scale, dtype = 128, 128 ** -0.5, torch.float16
    offsets = offsets_of(window, longest)
    q = random_rows((sum(lengths), 8, 128), dtype, 20)
    k, v = (random_rows((sum(lengths), 2, 128), dtype, 21 + i) for i in range(2))
    out, lse = torch.ops.fibsparse.varlen_fwd(q, k, v, cu, cu, longest, longest, offsets, [window], scale)
    dout, dlse = random_rows(out.shape, dtype, 30), random_rows(lse.shape, torch.float32, 31)
    assert_bitwise_in_both_orders(monkeypatch, torch.ops.fibsparse.varlen_bwd,
                                  (dout, q, k, v, out, lse, dlse, cu, cu, longest, longest, offsets, [window], scale))
