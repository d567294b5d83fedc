"""The compiled kernels (CPU and CUDA) against the float64 reference: outputs,
lse and every gradient, over a grid of shapes, patterns and dtypes."""
import itertools
import math

import pytest
import torch

from fibsparse_ext import fibsparse_attn, fibsparse_attn_ref
from utils import (DEVICES, TOLERANCE, attention_and_grads, cuda_kernels_of, position_dtype, random_offsets,
                   random_qkv, rel_err, requires_cuda)

# (batch, heads, heads_kv): plain, GQA, MQA, batch > 1.
HEAD_LAYOUTS = [(1, 1, 1), (2, 4, 2), (3, 4, 1), (1, 2, 2)]
HEAD_DIMS = {"cpu": [16, 64, 128], "cuda": [16, 32, 64, 128]}
DTYPES = {"cpu": [torch.float32, torch.float64],
          "cuda": [torch.float16, torch.bfloat16, torch.float32, torch.float64]}


def errors_against_reference(q, k, v, window, offsets, scale=None, ref_dtype=torch.float64, seed=0):
    """Relative errors of the kernel's out, lse, dq, dk, dv, d(offsets) against
    the reference run in `ref_dtype` on the same device (float64 is exact
    enough on either), with the same random upstream gradients for out and lse."""
    fractional = offsets.is_floating_point()
    if fractional:
        offsets = offsets.detach().requires_grad_(True)
    out, lse = fibsparse_attn(q, k, v, window, offsets, softmax_scale=scale, return_lse=True)

    def reference(dtype):
        inputs = [t.detach().to(dtype).requires_grad_(True) for t in (q, k, v)]
        pos = offsets.detach().to(dtype).requires_grad_(True) if fractional else offsets
        o, l = fibsparse_attn_ref(*inputs, window, pos, softmax_scale=scale, return_lse=True)
        return o, l, inputs + ([pos] if fractional else [])

    ref_out, ref_lse, ref_inputs = reference(torch.float64)
    generator = torch.Generator().manual_seed(seed)
    grad_out = torch.randn(ref_out.shape, generator=generator, dtype=torch.float64)
    grad_lse = torch.randn(ref_lse.shape, generator=generator, dtype=torch.float64)

    def loss(o, l):
        return (o.double() * grad_out.to(o.device)).sum() + (l.double() * grad_lse.to(l.device)).sum()

    inputs = [q, k, v] + ([offsets] if fractional else [])
    grads = torch.autograd.grad(loss(out, lse), inputs)
    ref_grads = torch.autograd.grad(loss(ref_out, ref_lse), ref_inputs)
    names = ["out", "lse", "dq", "dk", "dv", "doffsets"]
    errors = dict(zip(names, [rel_err(a, b) for a, b in zip([out, lse, *grads], [ref_out, ref_lse, *ref_grads])]))
    if ref_dtype != torch.float64:  # the same reference, run in low precision
        low_out, low_lse, low_inputs = reference(ref_dtype)
        low_grads = torch.autograd.grad(loss(low_out, low_lse), low_inputs)
        errors = dict(zip(names, [rel_err(a, b) for a, b in
                                  zip([low_out, low_lse, *low_grads], [ref_out, ref_lse, *ref_grads])]))
    assert out.dtype == q.dtype and out.shape == q.shape
    return errors


def check_against_reference(q, k, v, window, offsets, scale=None):
    """The accuracy bounds of docs/semantics.md on every output and gradient. Where a gradient is
    cancellation-bound (e.g. one key per query: ds = p * (dp - delta) with
    dp ~ delta), the float64 reference's own answer is near zero and no float32
    computation reaches 1e-5; there the kernel must be within 3x of the error of
    the same reference run in the kernel's dtype (flash-attention's rule)."""
    dtype = q.dtype
    tol = TOLERANCE[dtype]
    errors = errors_against_reference(q, k, v, window, offsets, scale)
    bad = {name: err for name, err in errors.items() if not err < tol}
    if bad and dtype != torch.float64:
        low = errors_against_reference(q, k, v, window, offsets, scale, ref_dtype=dtype)
        bad = {name: err for name, err in bad.items() if not (math.isfinite(low[name]) and err <= 3 * low[name])}
        assert not bad, f"relative errors above {tol} and 3x the {dtype} reference's {low}: {bad}"
    assert not bad, f"relative errors above {tol}: {bad} (all: {errors})"


def grid(device):
    params = []
    cases = itertools.product(DTYPES[device], HEAD_DIMS[device], [1, 7, 64, 300, 1000], [1, 4, 128],
                              [False, True], [False, True])
    for n, (dtype, head_dim, seqlen, window, fractional, per_head) in enumerate(cases):
        batch, heads, heads_kv = HEAD_LAYOUTS[n % len(HEAD_LAYOUTS)]
        params.append(pytest.param(dtype, head_dim, seqlen, window, fractional, per_head, batch, heads, heads_kv,
                           id=f"{str(dtype)[6:]}-d{head_dim}-L{seqlen}-w{window}-{'frac' if fractional else 'int'}"
                              f"-{'perhead' if per_head else 'shared'}-b{batch}h{heads}kv{heads_kv}"))
    return params


def run_case(device, dtype, head_dim, seqlen, window, fractional, per_head, batch, heads, heads_kv):
    torch.manual_seed(hash((seqlen, window, head_dim, fractional, per_head)) % 2**31)
    q, k, v = random_qkv(batch, seqlen, heads, heads_kv, head_dim, dtype, device)
    offsets = random_offsets(window, 6, heads if per_head else None, fractional, device, position_dtype(dtype))
    check_against_reference(q, k, v, window, offsets)


@pytest.mark.parametrize("dtype,head_dim,seqlen,window,fractional,per_head,batch,heads,heads_kv", grid("cpu"))
def test_cpu_matches_reference(dtype, head_dim, seqlen, window, fractional, per_head, batch, heads, heads_kv):
    run_case("cpu", dtype, head_dim, seqlen, window, fractional, per_head, batch, heads, heads_kv)


@requires_cuda
@pytest.mark.parametrize("dtype,head_dim,seqlen,window,fractional,per_head,batch,heads,heads_kv", grid("cuda"))
def test_cuda_matches_reference(dtype, head_dim, seqlen, window, fractional, per_head, batch, heads, heads_kv):
    run_case("cuda", dtype, head_dim, seqlen, window, fractional, per_head, batch, heads, heads_kv)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fractional", [False, True])
def test_fewer_queries_than_keys(device, fractional):
    """seqlen_q < seqlen_k: the queries are the last positions (bottom-right)."""
    dtype = torch.float64
    q, k, v = random_qkv(2, 5, 2, 1, 16, dtype, device, seqlen_k=40)
    offsets = random_offsets(4, 3, None, fractional, device, dtype, spread=8)
    check_against_reference(q, k, v, 4, offsets)


@pytest.mark.parametrize("device", DEVICES)
def test_padded_per_head_offsets_and_custom_scale(device):
    dtype = torch.float64
    q, k, v = random_qkv(1, 90, 3, 3, 16, dtype, device)
    offsets = torch.tensor([[8, 13, 21, 34], [9, 30, -1, -1], [-1, -1, -1, -1]], dtype=torch.int32, device=device)
    check_against_reference(q, k, v, 8, offsets, scale=0.37)


@pytest.mark.parametrize("device", DEVICES)
def test_no_offsets_is_sliding_window_attention(device):
    """An independent check of the pattern: window-only attention equals dense
    causal attention restricted to the band, built with an explicit mask."""
    dtype = torch.float64
    q, k, v = random_qkv(2, 50, 2, 2, 16, dtype, device, requires_grad=False)
    out = fibsparse_attn(q, k, v, 6, [])
    i = torch.arange(50)
    band = (i[:, None] - i[None, :] >= 0) & (i[:, None] - i[None, :] < 6)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2).cpu(), k.transpose(1, 2).cpu(), v.transpose(1, 2).cpu(), attn_mask=band).transpose(1, 2)
    assert rel_err(out, expected) < 1e-12


@pytest.mark.parametrize("device", DEVICES)
def test_lse_only_backward(device):
    """A loss on lse alone still gives the right gradients (dout is None)."""
    dtype = torch.float64
    q, k, v = random_qkv(1, 30, 2, 1, 16, dtype, device)
    _, lse = fibsparse_attn(q, k, v, 3, [5, 9], return_lse=True)
    grads = torch.autograd.grad(lse.sum(), [q, k])
    ref_in = [t.detach().cpu().requires_grad_(True) for t in (q, k, v)]
    _, ref_lse = fibsparse_attn_ref(*ref_in, 3, [5, 9], return_lse=True)
    ref_grads = torch.autograd.grad(ref_lse.sum(), ref_in[:2])
    assert max(rel_err(g, r) for g, r in zip(grads, ref_grads)) < 1e-12


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("fractional", [False, True])
def test_cuda_long_sequence_matches_reference(dtype, fractional):
    """seqlen 16384, window 128, Fibonacci offsets up to 4096, against the float64 reference."""
    torch.manual_seed(0)
    q, k, v = random_qkv(1, 16384, 4, 2, 64, dtype, "cuda")
    offsets = torch.tensor([144, 233, 377, 610, 987, 1597, 2584, 4181], device="cuda")
    offsets = offsets.float() * 0.93 if fractional else offsets.int()
    out_and_grads = attention_and_grads(q, k, v, 128, offsets)
    ref_in = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    ref_pos = offsets.detach().double().requires_grad_(fractional) if fractional else offsets
    ref_out, ref_lse = fibsparse_attn_ref(*ref_in, 128, ref_pos, return_lse=True)
    generator = torch.Generator(device="cuda").manual_seed(0)
    grad_out = torch.randn(ref_out.shape, generator=generator, device="cuda", dtype=q.dtype).double()
    grad_lse = torch.randn(ref_lse.shape, generator=generator, device="cuda", dtype=torch.float32).double()
    ref_grads = torch.autograd.grad([ref_out, ref_lse], ref_in + ([ref_pos] if fractional else []),
                                    [grad_out, grad_lse])
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    for name, a, b in zip(["out", "lse", "dq", "dk", "dv", "doffsets"], out_and_grads, [ref_out, ref_lse, *ref_grads]):
        assert rel_err(a, b) < tol, name


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fractional", [False, True])
def test_cuda_tensor_core_kernels_at_the_edges(dtype, fractional):
    """What the grid does not reach, on the fp16/bf16 tensor-core kernels: fewer
    queries than keys, per-head offsets padded with -1 (one head with none) and a
    custom scale, and a window spanning several 64-key chunks with GQA."""
    torch.manual_seed(3)
    pos_dtype = torch.float32

    q, k, v = random_qkv(2, 70, 4, 2, 64, dtype, "cuda", seqlen_k=300)
    check_against_reference(q, k, v, 20, random_offsets(20, 5, 4, fractional, "cuda", pos_dtype))

    q, k, v = random_qkv(1, 90, 3, 3, 32, dtype, "cuda")
    padded = torch.tensor([[8, 13, 21, 34], [9, 30, -1, -1], [-1, -1, -1, -1]], device="cuda")
    padded = torch.where(padded < 0, padded, padded + 0.4).to(pos_dtype) if fractional else padded.int()
    check_against_reference(q, k, v, 8, padded, scale=0.37)

    q, k, v = random_qkv(1, 700, 4, 1, 128, dtype, "cuda")
    check_against_reference(q, k, v, 300, random_offsets(300, 12, None, fractional, "cuda", pos_dtype, spread=30))


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("window", [50, 57, 66, 82, 98, 114, 121, 128, 146])
@pytest.mark.parametrize("fractional", [False, True])
def test_cuda_bands_of_8_to_14_tiles(dtype, head_dim, window, fractional):
    """The tensor-core passes walk a block's band in 16-row tiles, four a step;
    these windows give bands of 8 to 14 tiles (the grid's windows give at most
    7, or 12 and more), and fewer queries than keys and lengths that are not
    multiples of 16 cut some blocks' bands at the sequence ends. A tile walked
    twice or never shows against the float64 reference."""
    torch.manual_seed(window * head_dim + fractional)
    q, k, v = random_qkv(2, 333, 4, 2, head_dim, dtype, "cuda", seqlen_k=401)
    offsets = random_offsets(window, 4, 4, fractional, "cuda", torch.float32, spread=60)
    check_against_reference(q, k, v, window, offsets)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [16, 32, 64, 128])
@pytest.mark.parametrize("seqlen_q, seqlen_k", [(1, 1), (64, 64), (65, 65), (200, 333), (1000, 1000)])
def test_cuda_window_alone_backward(monkeypatch, dtype, head_dim, seqlen_q, seqlen_k):
    """The window alone on the tensor-core backward, for lengths of one row,
    one tile, one tile and a row, a ragged last block and fewer queries than
    keys: its gradients are within the reference's bounds, and offsets that
    no query reaches (the dq pass drops their steps; with GQA its blocks then
    serve two heads) change no bit of them. Where the window alone's dq pass
    would read stored dS instead (the next test), it is turned off here, so
    that both calls run the same passes."""
    monkeypatch.setenv("FIBSPARSE_STORED_DSCORES", "0")
    torch.manual_seed(seqlen_q * head_dim)
    q, k, v = random_qkv(2, seqlen_q, 4, 2, head_dim, dtype, "cuda", seqlen_k=seqlen_k, requires_grad=False)
    none = torch.zeros(0, dtype=torch.int32, device="cuda")
    scale = head_dim ** -0.5
    for window in (50, 128):
        unreachable = torch.tensor([max(seqlen_k, window) + 10, max(seqlen_k, window) + 20], dtype=torch.int32,
                                   device="cuda")
        out, lse = torch.ops.fibsparse.fwd(q, k, v, none, [window], scale)
        dout, dlse = torch.randn_like(out), torch.randn_like(lse)
        alone = torch.ops.fibsparse.bwd(dout, q, k, v, out, lse, dlse, none, [window], scale)
        with_offsets = torch.ops.fibsparse.bwd(dout, q, k, v, out, lse, dlse, unreachable, [window], scale)
        for name, a, b in zip(["dq", "dk", "dv"], alone[:3], with_offsets[:3]):
            assert torch.equal(a, b), (window, name)
        check_against_reference(q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), window, none)
        q, k, v = (t.detach() for t in (q, k, v))


def backward_on_both_routes(monkeypatch, *args):
    """The backward op's gradients with stored dS (the default where it
    applies) and on the general passes (FIBSPARSE_STORED_DSCORES=0)."""
    stored = torch.ops.fibsparse.bwd(*args)
    monkeypatch.setenv("FIBSPARSE_STORED_DSCORES", "0")
    general = torch.ops.fibsparse.bwd(*args)
    monkeypatch.delenv("FIBSPARSE_STORED_DSCORES")
    return stored, general


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [16, 32, 64, 128])
@pytest.mark.parametrize("seqlen", [1, 64, 65, 300, 1000])
def test_cuda_window_alone_dq_from_stored_dscores(monkeypatch, dtype, head_dim, seqlen):
    """Where queries and keys line up and the window is at most 129, the window
    alone's dk/dv pass forms delta itself and stores dS, and its dq pass reads
    the stored dS rather than recomputing it: dk and dv are bitwise those of the
    general passes (FIBSPARSE_STORED_DSCORES=0), with and without a gradient of
    lse, dq is within rounding of theirs, and all three are within the
    reference's bounds; windows of 1 (one key), 64, 128 and 129 (three 64-row
    query chunks per key tile, the most this route takes), lengths of one row,
    one tile, one tile and a row, and ragged last tiles. The stored dS starts as
    NaN (FIBSPARSE_POISON_OUTPUTS), so a tile the dq pass reads unwritten shows."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    torch.manual_seed(seqlen * head_dim)
    q, k, v = random_qkv(2, seqlen, 4, 2, head_dim, dtype, "cuda", requires_grad=False)
    none = torch.zeros(0, dtype=torch.int32, device="cuda")
    scale = head_dim ** -0.5
    for window in (1, 64, 128, 129):
        out, lse = torch.ops.fibsparse.fwd(q, k, v, none, [window], scale)
        dout = torch.randn_like(out)
        for dlse in (torch.randn_like(lse), None):
            stored, general = backward_on_both_routes(monkeypatch, dout, q, k, v, out, lse, dlse, none, [window], scale)
            assert torch.equal(stored[1], general[1]) and torch.equal(stored[2], general[2]), (window, dlse is None)
            if min(window, seqlen) > 1:  # one key per query: dq is cancellation noise in both (check_against_reference)
                assert rel_err(stored[0], general[0]) < 1e-2, (window, dlse is None)
        check_against_reference(q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), window, none)
        q, k, v = (t.detach() for t in (q, k, v))


@requires_cuda
@pytest.mark.parametrize("setting", ["off", "", "2"])
def test_cuda_stored_dscores_switch_is_checked(monkeypatch, setting):
    """FIBSPARSE_STORED_DSCORES takes 0 or 1: any other value is refused,
    naming the variable, what it got and what it takes, before the backward runs."""
    q, k, v = random_qkv(1, 128, 2, 2, 64, torch.float16, "cuda", requires_grad=False)
    none = torch.zeros(0, dtype=torch.int32, device="cuda")
    out, lse = torch.ops.fibsparse.fwd(q, k, v, none, [128], 0.125)
    monkeypatch.setenv("FIBSPARSE_STORED_DSCORES", setting)
    with pytest.raises(RuntimeError, match=f"FIBSPARSE_STORED_DSCORES must be one of 0, 1 \\(or unset\\), got '{setting}'"):
        torch.ops.fibsparse.bwd(torch.randn_like(out), q, k, v, out, lse, torch.zeros_like(lse), none, [128], 0.125)


def stored_dscores_offsets(window, heads, per_head, fractional):
    """Offsets for the stored-dS tests: shared or per head (one row padded with
    -1 after three, one head with none). Fractional rows start with a position
    below 1 (the query's own key and the one before it) and a whole one inside
    the window, and hold another whole one among the rest: f == 0, where the
    second row has no weight but d/d(position) reads it."""
    offsets = random_offsets(window, 6, heads if per_head else None, fractional, "cuda", torch.float32, spread=90)
    if fractional:
        offsets = torch.cat([torch.tensor([0.4, 1.0], device="cuda").expand(*offsets.shape[:-1], 2),
                             offsets[..., :4] + 1.5], dim=-1)
        offsets[..., 3] = offsets[..., 3].floor()
    if per_head:
        offsets[1, 3:] = -1
        offsets[5] = -1
    return offsets.contiguous()


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim, fractional", [(32, False), (64, False), (64, True), (128, False), (128, True)])
@pytest.mark.parametrize("seqlen", [1, 65, 300, 1000])
@pytest.mark.parametrize("per_head", [False, True])
def test_cuda_offsets_dq_from_stored_dscores(monkeypatch, dtype, head_dim, fractional, seqlen, per_head):
    """With offsets, where queries and keys line up and the window is at most
    129, the dk/dv pass runs first, computes each offset's P and dS itself
    and stores every dS (the band's and the offsets'; for fractional positions
    also each d(position) term), and the dq pass reads them: dq, dk, dv and
    d(offsets) are within rounding of the general passes'
    (FIBSPARSE_STORED_DSCORES=0), with and without a gradient of lse, and
    within the reference's bounds. GQA groups of 4 (dq blocks of several heads
    when the offsets are shared), per-head rows padded with -1 (one head with
    none), offsets beyond the sequence, windows of 1, 64, 128 and 129, and
    fractional positions below 1, inside the window and whole
    (stored_dscores_offsets; they take this route at head_dim 64 and 128, the
    general passes below it). The buffers the dk/dv pass writes for the dq
    pass start as NaN (FIBSPARSE_POISON_OUTPUTS), so a value the dq pass reads
    unwritten shows."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    torch.manual_seed(seqlen * head_dim + per_head + 2 * fractional)
    heads, heads_kv = 8, 2
    q, k, v = random_qkv(2, seqlen, heads, heads_kv, head_dim, dtype, "cuda", requires_grad=False)
    scale = head_dim ** -0.5
    for window in (1, 64, 128, 129):
        offsets = stored_dscores_offsets(window, heads, per_head, fractional)
        out, lse = torch.ops.fibsparse.fwd(q, k, v, offsets, [window], scale)
        dout = torch.randn_like(out)
        for dlse in (torch.randn_like(lse), None):
            stored, general = backward_on_both_routes(monkeypatch, dout, q, k, v, out, lse, dlse, offsets, [window],
                                                      scale)
            names = ["dq", "dk", "dv", "doffsets"] if fractional else ["dq", "dk", "dv"]
            for name, a, b in zip(names, stored, general):
                assert a.isfinite().all(), (window, name)
                # One key per query: cancellation noise (check_against_reference);
                # at window 1 fractional rows still read several (positions below 2).
                if min(window, seqlen) > 1 or (fractional and seqlen > 1):
                    assert rel_err(a, b) < 1e-2, (window, name, dlse is None)
                    # Element by element too: a dropped (query, offset) pair hides in a norm.
                    assert (a.float() - b.float()).abs().max() <= 1e-2 * b.float().abs().max(), (window, name)
        check_against_reference(q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), window, offsets)
        q, k, v = (t.detach() for t in (q, k, v))


@requires_cuda
@pytest.mark.parametrize("head_dim, switch, stored", [(32, None, False), (64, None, True), (64, "0", False),
                                                      (128, None, True), (128, "0", False)])
def test_cuda_fractional_positions_take_stored_dscores_from_head_dim_64(monkeypatch, head_dim, switch, stored):
    """Fractional positions take the backward with stored dS at head_dim 64
    and 128 (unless FIBSPARSE_STORED_DSCORES=0) and the general passes below it
    (bwd_launch.cuh's kStoredDscoresTakeFractional): the kernels that run show
    which, so the comparisons above do not compare the general passes with
    themselves."""
    if switch is not None:
        monkeypatch.setenv("FIBSPARSE_STORED_DSCORES", switch)
    q, k, v = random_qkv(1, 300, 8, 2, head_dim, torch.bfloat16, "cuda", requires_grad=False)
    positions = torch.tensor([3.5, 150.25], device="cuda")
    scale = head_dim ** -0.5
    out, lse = torch.ops.fibsparse.fwd(q, k, v, positions, [128], scale)
    dout = torch.randn_like(out)
    _, kernels = cuda_kernels_of(lambda: torch.ops.fibsparse.bwd(dout, q, k, v, out, lse, None, positions, [128],
                                                                 scale))
    names = " ".join(kernels)
    assert ("dq_from_dscores_with_offsets_kernel" in names) == stored, names
    assert ("dq_mma_kernel" in names) == (not stored), names


def same_offsets_per_head(offsets, heads):
    """Offsets shared by every head, as one identical (heads, K) row per head:
    the CUDA kernels then run one head per block, as for any per-head offsets."""
    return offsets.expand(heads, -1).contiguous()


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("group", [2, 4, 6, 8])
@pytest.mark.parametrize("fractional", [False, True])
@pytest.mark.parametrize("seqlen_q, seqlen_k", [(300, 300), (237, 300)])
def test_cuda_gqa_heads_sharing_offsets_share_blocks(monkeypatch, dtype, head_dim, group, fractional, seqlen_q,
                                                    seqlen_k):
    """GQA heads that share one row of offsets run on tensor-core blocks that
    serve several heads of a kv group (mma_tiles.cuh's heads_per_block) and
    stage each key strip once for all of them. Each warp computes as in a block
    of one head, so every result is bitwise that of the same offsets given per
    head (one head per block), and within the reference's bounds. Lengths are
    not multiples of 64; at 300 x 300 the first query block reaches no offset.
    (The Hopper forward's warpgroups of two heads sum an offset's score in
    other chains: FIBSPARSE_HOPPER_PACK=0 here, test_hopper.py compares them.)"""
    monkeypatch.setenv("FIBSPARSE_HOPPER_PACK", "0")
    torch.manual_seed(group * head_dim + fractional)
    heads_kv, window = 2, 48
    q, k, v = random_qkv(2, seqlen_q, group * heads_kv, heads_kv, head_dim, dtype, "cuda", seqlen_k=seqlen_k)
    offsets = torch.tensor([70, 101, 162, 255], device="cuda")
    offsets = offsets.float() + 0.37 if fractional else offsets.int()
    shared = attention_and_grads(q, k, v, window, offsets)
    per_head = attention_and_grads(q, k, v, window, same_offsets_per_head(offsets, q.shape[2]))
    for name, a, b in zip(["out", "lse", "dq", "dk", "dv"], shared, per_head):
        assert torch.equal(a, b), name
    if fractional:  # the per-head rows' d(offsets), summed over heads as the op sums a shared row's
        assert torch.equal(shared[5], per_head[5].sum(0))
    check_against_reference(q, k, v, window, offsets)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch, heads, heads_kv", [(1, 4, 4), (2, 6, 3), (3, 8, 2)])
def test_shared_offsets_derivative_is_the_per_head_sum(device, batch, heads, heads_kv):
    """d(positions) of one row of fractional offsets shared by every head is
    bitwise the sum over heads of d(positions) of the same row given per head: the
    op forms the per-head sums, then adds them over heads as a caller would
    (backward_result). On CUDA the GQA-sharing test checks this for shared blocks;
    here every device and the lane-group and CPU kernels' partials take part."""
    torch.manual_seed(batch * heads)
    q, k, v = random_qkv(batch, 200, heads, heads_kv, 32, torch.float32, device)
    offsets = torch.tensor([40.25, 61.5, 97.75, 150.125], device=device)
    shared = attention_and_grads(q, k, v, 16, offsets)[5]
    per_head = attention_and_grads(q, k, v, 16, same_offsets_per_head(offsets, heads))[5]
    assert per_head.shape == (heads, 4) and per_head.abs().sum() > 0
    assert torch.equal(shared, per_head.sum(0))


@pytest.mark.parametrize("fractional", [False, True])
def test_unsorted_offsets_through_the_op_are_refused_on_the_cpu(fractional):
    """Called directly, without fibsparse_attn's checks, the CPU op checks the
    offsets' values itself (a few numbers on the host: no sync); the CUDA op
    checks them on the device (test_reliability.py)."""
    q = torch.randn(1, 300, 2, 64, dtype=torch.float64 if fractional else torch.float32)
    offsets = torch.tensor([250.3, 290.3, 140.3]) if fractional else torch.tensor([250, 290, 140], dtype=torch.int32)
    with pytest.raises(RuntimeError, match=r"offsets entry 2 \(140"):
        torch.ops.fibsparse.fwd(q, q, q, offsets.to(q.dtype) if fractional else offsets, [128], 0.125)
