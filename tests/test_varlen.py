"""Packed variable-length batches (fibsparse_attn_varlen): each sequence gets
what the pattern gives it alone (docs/semantics.md, "Packed batches"), on
every device and dtype, through the ops, autograd and torch.compile."""
import math
import os
import subprocess
import sys

import pytest
import torch

from fibsparse_ext import fibsparse_attn, fibsparse_attn_varlen, fibsparse_attn_varlen_ref
from fibsparse_ext._offsets import band_argument
from utils import DEVICES, TOLERANCE, cuda_kernels_of, packed, position_dtype, random_offsets, rel_err, requires_cuda

DTYPES = {"cpu": [torch.float32, torch.float64],
          "cuda": [torch.float16, torch.bfloat16, torch.float32, torch.float64]}


def random_packed(lengths_q, lengths_k, heads, heads_kv, head_dim, dtype, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shapes = [(sum(lengths_q), heads, head_dim), (sum(lengths_k), heads_kv, head_dim),
              (sum(lengths_k), heads_kv, head_dim)]
    return [torch.randn(s, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype).requires_grad_()
            for s in shapes]


def outputs_and_grads(attention, q, k, v, cu_q, cu_k, max_q, max_k, window, offsets, seed=1):
    """out, lse and the gradients of q, k, v (and fractional positions) for
    random upstream gradients of out and lse."""
    offsets = offsets.detach().requires_grad_(offsets.is_floating_point())
    out, lse = attention(q, k, v, cu_q, cu_k, max_q, max_k, window, offsets, return_lse=True)
    generator = torch.Generator().manual_seed(seed)
    grad_out = torch.randn(out.shape, generator=generator, dtype=torch.float64).to(out.device, out.dtype)
    grad_lse = torch.randn(lse.shape, generator=generator, dtype=torch.float64).to(lse.device, lse.dtype)
    inputs = [q, k, v] + ([offsets] if offsets.requires_grad else [])
    return [out, lse, *torch.autograd.grad([out, lse], inputs, [grad_out, grad_lse])]


def check_against_reference(lengths_q, lengths_k, heads, heads_kv, head_dim, window, offsets, dtype, device):
    cu_q, max_q = packed(lengths_q, device)
    cu_k, max_k = packed(lengths_k, device)
    q, k, v = random_packed(lengths_q, lengths_k, heads, heads_kv, head_dim, dtype, device)
    got = outputs_and_grads(fibsparse_attn_varlen, q, k, v, cu_q, cu_k, max_q, max_k, window, offsets)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    offsets64 = offsets.double() if offsets.is_floating_point() else offsets
    want = outputs_and_grads(fibsparse_attn_varlen_ref, q64, k64, v64, cu_q, cu_k, max_q, max_k, window, offsets64)
    names = ["out", "lse", "dq", "dk", "dv", "doffsets"]
    assert got[0].shape == q.shape and got[0].dtype == dtype and got[1].shape == (heads, sum(lengths_q))
    errors = {name: rel_err(a, b) for name, a, b in zip(names, got, want) if b.numel() and b.norm() > 0}
    bad = {name: err for name, err in errors.items() if not err < TOLERANCE[dtype]}
    assert not bad, f"relative errors above {TOLERANCE[dtype]}: {bad}"


# (lengths_q, lengths_k): empty sequences (with and without keys), length 1,
# fewer queries than keys, a sequence across several kernel blocks.
LAYOUTS = {
    "mixed": ([5, 0, 17, 1, 70, 0], [7, 3, 17, 1, 150, 0]),
    "one": ([200], [200]),
    "tiny": ([1, 2, 1, 3, 1], [1, 2, 4, 3, 1]),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fractional", [False, True])
@pytest.mark.parametrize("per_head", [False, True])
def test_matches_reference_per_sequence(device, layout, fractional, per_head):
    lengths_q, lengths_k = LAYOUTS[layout]
    for n, dtype in enumerate(DTYPES[device]):
        heads, heads_kv, head_dim = [(4, 2, 16), (2, 2, 64), (4, 1, 32), (2, 1, 128)][n]
        torch.manual_seed(n)
        offsets = random_offsets(3, 5, heads if per_head else None, fractional, device, position_dtype(dtype),
                                 spread=12)
        check_against_reference(lengths_q, lengths_k, heads, heads_kv, head_dim, 3, offsets, dtype, device)


@pytest.mark.parametrize("device", DEVICES)
def test_hundreds_of_tiny_sequences(device):
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(0, 6, (300,), generator=generator).tolist()
    offsets = torch.tensor([3, 5], dtype=torch.int32, device=device)
    check_against_reference(lengths, lengths, 2, 1, 16, 2, offsets, torch.float64, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fractional", [False, True])
def test_packed_rows_equal_each_sequence_alone(monkeypatch, device, fractional):
    """Packing documents gives bitwise the rows (and q, k, v gradients) that
    fibsparse_attn gives each alone: the kernels walk a sequence the same way
    wherever it starts in the buffer. Here both calls run the mma.sync forward
    (FIBSPARSE_HOPPER=0); test_packed_rows_match_the_hopper_forward checks the
    Hopper forward's, which both take by default on an H100/H200."""
    monkeypatch.setenv("FIBSPARSE_HOPPER", "0")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    lengths = [130, 1, 0, 64, 257]
    cu, longest = packed(lengths, device)
    q, k, v = random_packed(lengths, lengths, 4, 2, 64, dtype, device)
    offsets = random_offsets(16, 4, None, fractional, device, position_dtype(dtype), spread=30)
    got = outputs_and_grads(fibsparse_attn_varlen, q, k, v, cu, cu, longest, longest, 16, offsets)
    grad_out = torch.randn_like(got[0])
    out, = (fibsparse_attn_varlen(q, k, v, cu, cu, longest, longest, 16, offsets),)
    dq, dk, dv = torch.autograd.grad(out, [q, k, v], grad_out)
    bounds = cu.tolist()
    for b in range(len(lengths)):
        rows = slice(bounds[b], bounds[b + 1])
        alone = [t[rows].detach().unsqueeze(0).requires_grad_() for t in (q, k, v)]
        out_alone, lse_alone = fibsparse_attn(*alone, 16, offsets, return_lse=True)
        grads_alone = torch.autograd.grad(out_alone, alone, grad_out[rows].unsqueeze(0)) if lengths[b] else [
            torch.zeros_like(t) for t in alone]
        assert torch.equal(out[rows], out_alone[0])
        assert torch.equal(got[1][:, rows], lse_alone[0])
        for packed_grad, grad in zip((dq, dk, dv), grads_alone):
            assert torch.equal(packed_grad[rows], grad[0])


@requires_cuda
@pytest.mark.parametrize("fractional", [False, True])
def test_packed_rows_match_the_hopper_forward(fractional):
    """Where a dense call runs the Hopper forward (an H100/H200, 16-bit inputs,
    integer or fractional offsets) the packed one runs it too, through tensor
    maps of each sequence's own rows: the packed rows equal each sequence alone
    bitwise (elsewhere both run the mma.sync forward)."""
    lengths = [130, 1, 0, 64, 257]
    cu, longest = packed(lengths, "cuda")
    q, k, v = random_packed(lengths, lengths, 4, 2, 64, torch.bfloat16, "cuda")
    offsets = random_offsets(16, 4, None, fractional, "cuda", torch.float32, spread=30)
    out, lse = fibsparse_attn_varlen(q, k, v, cu, cu, longest, longest, 16, offsets, return_lse=True)
    bounds = cu.tolist()
    for b in range(len(lengths)):
        rows = slice(bounds[b], bounds[b + 1])
        if not lengths[b]:
            continue
        out_alone, lse_alone = fibsparse_attn(*(t[rows].unsqueeze(0) for t in (q, k, v)), 16, offsets,
                                              return_lse=True)
        assert torch.equal(out[rows], out_alone[0]) and torch.equal(lse[:, rows], lse_alone[0]), b


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("heads, heads_kv, head_dim", [(4, 2, 64), (8, 2, 128)])
@pytest.mark.parametrize("fractional", [False, True])
def test_non_finite_rows_stay_in_their_sequence(device, heads, heads_kv, head_dim, fractional):
    """No key of another sequence is read: a sequence whose keys are NaN and
    values inf leaves its neighbours' rows and gradients finite and equal to
    theirs with clean neighbours. Its neighbours' tiles reach into it: the
    first sequence's last band chunk past its end (70 rows), the third's
    offsets' strips before its start."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    lengths = [70, 64, 300]
    cu, longest = packed(lengths, device)
    clean = random_packed(lengths, lengths, heads, heads_kv, head_dim, dtype, device)
    poisoned = [t.detach().clone() for t in clean]
    with torch.no_grad():
        poisoned[1][70:134] = float("nan")
        poisoned[2][70:134] = float("inf")
    offsets = random_offsets(16, 6, None, fractional, device, position_dtype(dtype), spread=40)
    results = []
    for q, k, v in (clean, poisoned):
        q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
        out, lse = fibsparse_attn_varlen(q, k, v, cu, cu, longest, longest, 16, offsets, return_lse=True)
        grads = torch.autograd.grad(out.float().sum(), [q, k, v])
        results.append([out, lse.transpose(0, 1), *grads])
    for rows in (slice(0, 70), slice(134, 434)):
        for name, a, b in zip(["out", "lse", "dq", "dk", "dv"], *results):
            assert torch.isfinite(b[rows]).all() and torch.equal(a[rows], b[rows]), (name, rows)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim, group", [(64, 4), (64, 8), (128, 2), (128, 4)])
@pytest.mark.parametrize("fractional", [False, True])
def test_cuda_gqa_heads_sharing_offsets_share_blocks(monkeypatch, dtype, head_dim, group, fractional):
    """A packed batch on tensor-core blocks that serve several heads of a kv
    group (shared offsets, mma_tiles.cuh's heads_per_block): the reference's
    values, and bitwise the results of the same offsets given per head (one head
    per block). Sequences end inside a block, and the longest one's blocks lie
    past the shorter ones' ends. The Hopper forward's two heads a warpgroup
    (four or more heads of a group) sum an offset's score in two chains where
    one head a block sums it in one, so the bitwise comparison keeps one head
    a warpgroup (FIBSPARSE_HOPPER_PACK=0); the reference comparison runs the
    default."""
    lengths_q, lengths_k = [70, 1, 0, 200, 130], [100, 1, 3, 200, 130]
    heads_kv, window = 2, 48
    heads = group * heads_kv
    offsets = torch.tensor([70, 101, 162], device="cuda")
    offsets = offsets.float() + 0.37 if fractional else offsets.int()
    check_against_reference(lengths_q, lengths_k, heads, heads_kv, head_dim, window, offsets, dtype, "cuda")
    monkeypatch.setenv("FIBSPARSE_HOPPER_PACK", "0")
    cu_q, max_q = packed(lengths_q, "cuda")
    cu_k, max_k = packed(lengths_k, "cuda")
    q, k, v = random_packed(lengths_q, lengths_k, heads, heads_kv, head_dim, dtype, "cuda")
    args = (q, k, v, cu_q, cu_k, max_q, max_k, window)
    shared = outputs_and_grads(fibsparse_attn_varlen, *args, offsets)
    per_head = outputs_and_grads(fibsparse_attn_varlen, *args, offsets.expand(heads, -1).contiguous())
    for name, a, b in zip(["out", "lse", "dq", "dk", "dv"], shared, per_head):
        assert torch.equal(a, b), name
    if fractional:  # the per-head rows' d(offsets), summed over heads as the op sums a shared row's
        assert torch.equal(shared[5], per_head[5].sum(0))


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    """q, k, v as views into one (total, 3, heads, head_dim) projection."""
    dtype = torch.float64
    lengths = [9, 0, 33]
    cu, longest = packed(lengths, device)
    qkv = torch.randn(sum(lengths), 3, 2, 16, dtype=dtype, device=device)
    q, k, v = qkv.unbind(1)
    assert not q.is_contiguous()
    out = fibsparse_attn_varlen(q, k, v, cu, cu, longest, longest, 4, [5, 9])
    want = fibsparse_attn_varlen_ref(q, k, v, cu, cu, longest, longest, 4, [5, 9])
    assert rel_err(out, want) < TOLERANCE[dtype]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fractional", [False, True])
def test_gradcheck(device, fractional):
    lengths_q, lengths_k = [3, 0, 6, 1], [4, 2, 6, 1]
    cu_q, max_q = packed(lengths_q, device)
    cu_k, max_k = packed(lengths_k, device)
    q, k, v = random_packed(lengths_q, lengths_k, 2, 1, 16, torch.float64, device)
    offsets = (torch.tensor([2.5, 4.25], dtype=torch.float64, device=device, requires_grad=True) if fractional
               else torch.tensor([2, 4], dtype=torch.int32, device=device))

    def attention(q, k, v, *positions):
        return fibsparse_attn_varlen(q, k, v, cu_q, cu_k, max_q, max_k, 2, positions[0] if positions else offsets,
                                     return_lse=True)

    assert torch.autograd.gradcheck(attention, (q, k, v) + ((offsets,) if fractional else ()))


BAD_LENGTHS = [
    (lambda cu_q, cu_k: (cu_q.long(), cu_k), {}, r"cu_seqlens_q must be an int32 tensor of shape \(batch \+ 1,\)"),
    (lambda cu_q, cu_k: (cu_q, cu_k[:-1]), {}, r"cu_seqlens_k must have cu_seqlens_q's shape"),
    (lambda cu_q, cu_k: (cu_q + 1, cu_k), {}, r"cu_seqlens_q must start at 0, got 1"),
    (lambda cu_q, cu_k: (cu_q, torch.tensor([0, 7, 5, 16], dtype=torch.int32)), {},
     r"must not decrease; sequence 1 has seqlen_q 5, seqlen_k -2"),
    (lambda cu_q, cu_k: (cu_q, torch.tensor([0, 7, 12, 15], dtype=torch.int32)), {},
     r"cu_seqlens_k must end at the tensor's rows \(16\), got 15"),
    (lambda cu_q, cu_k: (cu_q, cu_k), {"max_seqlen_q": 5}, r"sequence 0 \(seqlen_q 6, seqlen_k 7\) is longer than max_seqlen_q 5"),
    (lambda cu_q, cu_k: (torch.tensor([0, 7, 12, 16], dtype=torch.int32), torch.tensor([0, 6, 11, 16],
                                                                                         dtype=torch.int32)),
     {}, r"sequence 0 has seqlen_q 7 > seqlen_k 6"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(len(BAD_LENGTHS)))
@pytest.mark.parametrize("path", ["api", "op"])
def test_bad_lengths_are_refused_by_name(device, case, path):
    """The entry point (one host read of cu_seqlens) and, on the CPU, the op
    itself refuse bad boundaries, naming the argument and the sequence."""
    if path == "op" and device == "cuda":
        pytest.skip("the CUDA op checks values on the device (test_bad_lengths_stop_the_cuda_kernels)")
    change, overrides, match = BAD_LENGTHS[case]
    q, k, v = random_packed([6, 5, 5], [7, 5, 4], 2, 2, 16, torch.float32, device)
    cu_q, cu_k = change(packed([6, 5, 5])[0], packed([7, 5, 4])[0])
    cu_q, cu_k = cu_q.to(device), cu_k.to(device)
    args = {"max_seqlen_q": 7, "max_seqlen_k": 7, **overrides}
    with pytest.raises((ValueError, RuntimeError), match=match):
        if path == "api":
            fibsparse_attn_varlen(q, k, v, cu_q, cu_k, args["max_seqlen_q"], args["max_seqlen_k"], 2, [3])
        else:
            torch.ops.fibsparse.varlen_fwd(q, k, v, cu_q, cu_k, args["max_seqlen_q"], args["max_seqlen_k"],
                                           torch.tensor([3], dtype=torch.int32), band_argument(2), 0.25)


@pytest.mark.parametrize("device", DEVICES)
def test_bad_shapes_are_refused_by_name(device):
    q, k, v = random_packed([4], [4], 2, 2, 16, torch.float32, device)
    cu, _ = packed([4], device)
    cases = [((q.unsqueeze(0), k, v, cu, cu, 4, 4), r"q must have shape \(total_q, heads, head_dim\)"),
             ((q, k, v[:, :1], cu, cu, 4, 4), r"v must have the shape of k"),
             ((q, k, v, cu.to(torch.int64), cu, 4, 4), r"cu_seqlens_q must be an int32 tensor"),
             ((q, k, v, cu, cu, 5, 4), r"max_seqlen_q must be an int in \[0, total_q=4\], got 5|max_seqlen_q must be "
                                        r"in \[0, total_q=4\], got 5")]
    for args, match in cases:
        with pytest.raises((ValueError, RuntimeError), match=match):
            fibsparse_attn_varlen(*args, 2, [3])


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    lengths_q, lengths_k = [3, 0, 9], [5, 2, 9]
    cu_q, max_q = packed(lengths_q, device)
    cu_k, max_k = packed(lengths_k, device)
    for fractional in [False, True]:
        q, k, v = random_packed(lengths_q, lengths_k, 4, 2, 16, torch.float32, device)
        offsets = (torch.tensor([3.5, 6.0], device=device, requires_grad=True) if fractional
                   else torch.tensor([3, 6], dtype=torch.int32, device=device))
        args = (q, k, v, cu_q, cu_k, max_q, max_k, offsets, [3], 0.3)
        torch.library.opcheck(torch.ops.fibsparse.varlen_fwd.default, args)
        out, lse = torch.ops.fibsparse.varlen_fwd(*args)
        dout = torch.randn_like(out)
        bwd_args = (dout, q.detach(), k.detach(), v.detach(), out.detach(), lse.detach(), torch.randn_like(lse),
                    cu_q, cu_k, max_q, max_k, offsets.detach(), [3], 0.3)
        torch.library.opcheck(torch.ops.fibsparse.varlen_bwd.default, bwd_args,
                              test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_takes_new_totals_without_recompiling(device):
    """Under torch.compile(dynamic=True) a new total or longest sequence is
    the same graph: no graph break, no recompile."""
    torch._dynamo.reset()
    calls = []

    def counting_backend(graph_module, example_inputs):
        calls.append(graph_module)
        return graph_module.forward

    def step(q, k, v, cu, longest):
        return fibsparse_attn_varlen(q, k, v, cu, cu, longest, longest, 4, [5, 9]).sum()

    compiled = torch.compile(step, backend=counting_backend, dynamic=True, fullgraph=True)
    for lengths in ([5, 9, 3], [40, 1], [7, 7, 7, 7]):
        cu, longest = packed(lengths, device)
        q, k, v = random_packed(lengths, lengths, 2, 1, 16, torch.float32, device)
        compiled(q, k, v, cu, longest).backward()
        want = fibsparse_attn_varlen_ref(*(t.detach().double() for t in (q, k, v)), cu, cu, longest, longest, 4,
                                         [5, 9]).sum()
        assert math.isclose(step(q, k, v, cu, longest).item(), want.item(), rel_tol=1e-5)
    assert len(calls) == 1


@requires_cuda
@pytest.mark.parametrize("fractional", [False, True])
@pytest.mark.parametrize("stored_dscores", ["1", "0"])
def test_cuda_one_long_sequence_equals_the_dense_call(monkeypatch, fractional, stored_dscores):
    """One 40000-token sequence through the packed path gives bitwise the dense call's rows and gradients
    on the same kernels: the mma.sync forward (the Hopper forward's packed rows:
    test_packed_rows_match_the_hopper_forward), and the backward with stored dS or the general passes
    (FIBSPARSE_STORED_DSCORES) in both calls."""
    monkeypatch.setenv("FIBSPARSE_HOPPER", "0")
    monkeypatch.setenv("FIBSPARSE_STORED_DSCORES", stored_dscores)
    lengths = [40000]
    cu, longest = packed(lengths, "cuda")
    q, k, v = random_packed(lengths, lengths, 4, 2, 64, torch.bfloat16, "cuda")
    offsets = random_offsets(128, 10, None, fractional, "cuda", torch.float32, spread=3000)
    grad_out = torch.randn_like(q)
    out = fibsparse_attn_varlen(q, k, v, cu, cu, longest, longest, 128, offsets)
    grads = torch.autograd.grad(out, [q, k, v], grad_out)
    dense = fibsparse_attn(*(t.unsqueeze(0) for t in (q, k, v)), 128, offsets)
    dense_grads = torch.autograd.grad(dense, [q, k, v], grad_out.unsqueeze(0))
    assert torch.equal(out, dense[0])
    for a, b in zip(grads, dense_grads):
        assert torch.equal(a, b)


@requires_cuda
@pytest.mark.parametrize("heads, heads_kv, head_dim", [(4, 4, 64), (8, 2, 128)])
@pytest.mark.parametrize("offsets_kind", ["none", "integer", "fractional"])
@pytest.mark.parametrize("window", [16, 128, 129])
def test_cuda_packed_backward_from_stored_dscores(monkeypatch, heads, heads_kv, head_dim, offsets_kind, window):
    """A packed batch whose queries and keys line up takes the backward with
    stored dS where a dense batch would (the window alone and integer offsets;
    fractional positions at head_dim 64 and 128): its dS tiles lie one sequence after
    another in the buffer. Each sequence's out, lse and gradients are bitwise
    those of a dense call of it alone, which runs the same kernels; sequences
    are empty, one row long and ragged, and the buffers the dk/dv pass writes
    start as NaN (FIBSPARSE_POISON_OUTPUTS), so a tile read from a neighbour's
    place or never written shows. The kernels take queries and keys to line up
    when there are as many of each in all, which the host sees without reading
    the boundaries: one tensor passed as both, two holding the same values, and
    the op called directly with two all take the route, bitwise alike. Fewer
    queries than keys take the general passes, as FIBSPARSE_STORED_DSCORES=0
    does, within rounding of the stored route."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    lengths = [130, 1, 0, 64, 257, 700, 63]
    cu, longest = packed(lengths, "cuda")
    q, k, v = random_packed(lengths, lengths, heads, heads_kv, head_dim, torch.bfloat16, "cuda", seed=window)
    torch.manual_seed(window + head_dim)
    if offsets_kind == "none":
        offsets = torch.zeros(0, dtype=torch.int32, device="cuda")
    else:
        offsets = random_offsets(window, 5, None, offsets_kind == "fractional", "cuda", torch.float32, spread=90)
    grad_out, grad_lse = torch.randn_like(q), torch.randn(heads, sum(lengths), device="cuda")
    stored_route = offsets_kind != "fractional" or head_dim >= 64

    def packed_call(cu_k):
        out, lse = fibsparse_attn_varlen(q, k, v, cu, cu_k, longest, longest, window, offsets, return_lse=True)
        return [out, lse, *torch.autograd.grad([out, lse], [q, k, v], [grad_out, grad_lse])]

    def took_stored_route(kernels):
        return any("dq_from_dscores" in name for name in kernels)

    got, kernels = cuda_kernels_of(lambda: packed_call(cu))
    assert took_stored_route(kernels) == stored_route, kernels
    same_values, kernels = cuda_kernels_of(lambda: packed_call(cu.clone()))
    assert took_stored_route(kernels) == stored_route, kernels
    for name, a, b in zip(["out", "lse", "dq", "dk", "dv"], got, same_values):
        assert torch.equal(a, b), name
    op_args = (q.detach(), k.detach(), v.detach(), cu, cu.clone(), longest, longest, offsets, band_argument(window),
               head_dim ** -0.5)
    out, lse = torch.ops.fibsparse.varlen_fwd(*op_args)
    op_grads, kernels = cuda_kernels_of(
        lambda: torch.ops.fibsparse.varlen_bwd(grad_out, *op_args[:3], out, lse, grad_lse, *op_args[3:]))
    assert took_stored_route(kernels) == stored_route, kernels
    for name, a, b in zip(["dq", "dk", "dv"], got[2:], op_grads):
        assert torch.equal(a, b), name
    # The first sequence's first query dropped (130 keys, 129 queries): q's rows from 1.
    cu_q, _ = packed([lengths[0] - 1, *lengths[1:]], "cuda")
    fewer_queries = (q.detach()[1:], k.detach(), v.detach(), cu_q, cu, longest, longest, offsets,
                     band_argument(window), head_dim ** -0.5)
    out_q, lse_q = torch.ops.fibsparse.varlen_fwd(*fewer_queries)
    _, kernels = cuda_kernels_of(lambda: torch.ops.fibsparse.varlen_bwd(
        grad_out[1:], *fewer_queries[:3], out_q, lse_q, grad_lse[:, 1:], *fewer_queries[3:]))
    assert not took_stored_route(kernels), kernels  # (where stored_route is False, no call takes it)
    monkeypatch.setenv("FIBSPARSE_STORED_DSCORES", "0")
    general = packed_call(cu)
    monkeypatch.delenv("FIBSPARSE_STORED_DSCORES")
    for name, a, b in zip(["dq", "dk", "dv"], got[2:], general[2:]):
        assert a.isfinite().all(), name
        assert (a.float() - b.float()).abs().max() <= 1e-2 * b.float().abs().max(), name
    bounds = cu.tolist()
    for b in range(len(lengths)):
        rows = slice(bounds[b], bounds[b + 1])
        if not lengths[b]:
            continue
        alone = [t[rows].detach().unsqueeze(0).requires_grad_() for t in (q, k, v)]
        out, lse = fibsparse_attn(*alone, window, offsets, return_lse=True)
        grads = torch.autograd.grad([out, lse], alone, [grad_out[rows].unsqueeze(0), grad_lse[:, rows].unsqueeze(0)])
        assert torch.equal(got[0][rows], out[0]) and torch.equal(got[1][:, rows], lse[0]), b
        for name, packed_grad, grad in zip(["dq", "dk", "dv"], got[2:], grads):
            assert torch.equal(packed_grad[rows], grad[0]), (b, name)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_every_output_element_is_written(monkeypatch, dtype):
    """Outputs are NaN-filled before the kernels run (FIBSPARSE_POISON_OUTPUTS=1):
    every row of every sequence, and the keys of a sequence without queries, are written."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    lengths_q, lengths_k = [65, 0, 1, 130], [70, 9, 1, 200]
    cu_q, max_q = packed(lengths_q, "cuda")
    cu_k, max_k = packed(lengths_k, "cuda")
    q, k, v = random_packed(lengths_q, lengths_k, 4, 2, 64, dtype, "cuda")
    offsets = torch.tensor([7.5, 40.25], device="cuda", requires_grad=True)
    out = fibsparse_attn_varlen(q, k, v, cu_q, cu_k, max_q, max_k, 16, offsets)
    grads = torch.autograd.grad(out.float().sum(), [q, k, v, offsets])
    for t in (out, *grads):
        assert torch.isfinite(t).all()


@requires_cuda
@pytest.mark.parametrize("call, offsets", [("varlen_fwd", [3]), ("varlen_bwd", []), ("varlen_bwd", [3, 90])])
def test_bad_lengths_stop_the_cuda_kernels(call, offsets):
    """A direct op call with boundaries the entry point would refuse stops the
    kernels with a device-side assert (one process per case: it ends the CUDA
    context). Queries and keys are as many in all, and the sequences average
    over 32 keys, so the backward takes its stored-dS route, which reads the
    two tensors' values only on the device."""
    script = (
        "import torch, fibsparse_ext\n"
        "q = torch.randn(128, 2, 64, device='cuda', dtype=torch.bfloat16)\n"
        "lse = torch.randn(2, 128, device='cuda')\n"
        "cu_q = torch.tensor([0, 70, 100, 128], dtype=torch.int32, device='cuda')\n"
        "cu_k = torch.tensor([0, 60, 100, 128], dtype=torch.int32, device='cuda')\n"
        f"offsets = torch.tensor({offsets}, dtype=torch.int32, device='cuda')\n"
        "bounds = (cu_q, cu_k, 70, 70, offsets, [2], 0.125)\n"
        + ("torch.ops.fibsparse.varlen_fwd(q, q, q, *bounds)\n" if call == "varlen_fwd" else
           "torch.ops.fibsparse.varlen_bwd(q, q, q, q, q, lse, None, *bounds)\n")
        + "torch.cuda.synchronize()\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, CUDA_LAUNCH_BLOCKING="1"))
    assert result.returncode != 0
    assert "device-side assert" in result.stderr or "cu_seqlens" in result.stderr, result.stderr[-2000:]


def test_checked_once_remembers_unchanged_tensors_only():
    """The memory behind the once-per-version checks of CUDA cu_seqlens (and
    offsets): an unchanged tensor is not re-read; an in-place write, a new
    tensor or new settings are checked again."""
    from fibsparse_ext._checked_once import CheckedOnce
    memory, calls = CheckedOnce(), []
    cu = torch.tensor([0, 3, 5], dtype=torch.int32)
    memory.run((cu, cu), (5,), lambda: calls.append("first"))
    memory.run((cu, cu), (5,), lambda: calls.append("again"))
    assert calls == ["first"]
    memory.run((cu, cu), (6,), lambda: calls.append("settings"))
    cu.add_(0)
    memory.run((cu, cu), (6,), lambda: calls.append("written"))
    memory.run((cu.clone(), cu), (6,), lambda: calls.append("new tensor"))
    assert calls == ["first", "settings", "written", "new tensor"]

    def refuse():
        raise ValueError("bad")
    fresh = torch.tensor([0, 1], dtype=torch.int32)
    for _ in range(2):  # a refused tensor is never remembered as checked
        with pytest.raises(ValueError):
            memory.run((fresh,), (), refuse)
    with torch.inference_mode():  # inference tensors have no version counter: checked every time
        made_in_inference = torch.tensor([0, 2], dtype=torch.int32)
        for _ in range(2):
            memory.run((made_in_inference,), (), lambda: calls.append("inference"))
    assert calls[-2:] == ["inference", "inference"]


@requires_cuda
def test_cuda_lengths_are_read_once_per_tensor_version(monkeypatch):
    import fibsparse_ext.varlen as varlen
    reads = []
    monkeypatch.setattr(varlen, "check_packed_lengths", lambda *args: reads.append(args))
    cu, longest = packed([5, 9], "cuda")
    q, k, v = random_packed([5, 9], [5, 9], 2, 2, 16, torch.bfloat16, "cuda")
    for _ in range(3):
        fibsparse_attn_varlen(q, k, v, cu, cu, longest, longest, 4, [5])
    assert len(reads) == 1
    cu.add_(0)
    fibsparse_attn_varlen(q, k, v, cu, cu, longest, longest, 4, [5])
    assert len(reads) == 2
