"""A seeded random grid of fibsparse_attn calls, each checked against the
reference: shapes, GQA, windows, integer / fractional / per-head offsets,
dtypes and strides are drawn at random, and NaN, +-inf or huge values are
injected into random rows of q, k and v.

What is asserted (docs/semantics.md, non-finite values):
- exact paths (CPU; CUDA float32 / float64): out, lse and every gradient are
  non-finite exactly where the reference's are, and equal to it elsewhere;
- the fp16 / bf16 tensor-core path: lse exactly as above; out, dq, dk and dv
  non-finite where the reference's are, and beyond that only in the 16-row
  tiles that stage a non-finite row (tensor_core_extent for queries,
  tensor_core_key_extent for keys; a query that holds an infinite element may
  come out NaN where the exact answer is 0); equal to the reference wherever
  they are finite. d/d(position), a sum over every query, is compared there
  only in cases without injections.

The reference runs at the kernel's accumulation precision (float32, float64
for float64 inputs), so that scores that overflow float32 overflow in both.
"""
from __future__ import annotations

import dataclasses
import os
import random

import torch

from fibsparse_ext import PADDING, fibsparse_attn, fibsparse_attn_ref
from utils import HOPPER

TILE = 16  # queries per tensor-core warp tile
HOPPER_TILE = 64  # queries per block of the Hopper forward, and rows per staged step
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-4, torch.bfloat16: 3e-2, torch.float16: 3e-2}
HUGE = {torch.float64: 1e200, torch.float32: 1e30, torch.bfloat16: 1e30, torch.float16: 6e4}


@dataclasses.dataclass
class Case:
    seed: int
    device: str
    dtype: torch.dtype
    batch: int
    seqlen_q: int
    seqlen_k: int
    heads: int
    heads_kv: int
    head_dim: int
    window: int
    offsets: torch.Tensor            # float64 or int64, on the CPU; (K,) or (heads, K)
    injections: list                 # (tensor name, batch, row, head, column, value)
    layout: str                      # "contiguous", "sliced" or "transposed"

    @property
    def fractional(self) -> bool:
        return self.offsets.is_floating_point()

    @property
    def tensor_cores(self) -> bool:
        return self.device == "cuda" and self.dtype in (torch.float16, torch.bfloat16)

    @property
    def hopper_forward(self) -> bool:
        """Whether the Hopper forward may run the case (its layout may still send
        it to the mma.sync forward: the extents of both are allowed)."""
        return (self.tensor_cores and HOPPER and os.environ.get("FIBSPARSE_HOPPER") != "0"
                and self.head_dim in (64, 128))


def _offsets(rng: random.Random, window: int, heads: int, seqlen_k: int, fractional: bool) -> torch.Tensor:
    per_head = rng.random() < 0.3
    rows = []
    for _ in range(heads if per_head else 1):
        count = rng.randint(0, 6)
        if fractional:
            start = rng.choice([0.0, rng.uniform(0, window + 3)])
            row, x = [], start
            for _ in range(count):
                # Whole numbers too: f == 0 reads one row only (its neighbour has weight 0).
                row.append(float(round(x)) if rng.random() < 0.4 else x)
                x = row[-1] + rng.uniform(0.5, seqlen_k / 2 + 2)
        else:
            row, x = [], window + rng.randint(0, 3)
            for _ in range(count):
                row.append(x)
                x += rng.randint(1, max(1, seqlen_k // 2))
        rows.append(row)
    if not per_head:
        return torch.tensor(rows[0], dtype=torch.float64 if fractional else torch.int64).reshape(-1)
    width = max(len(r) for r in rows)
    padded = [r + [PADDING] * (width - len(r)) for r in rows]
    return torch.tensor(padded, dtype=torch.float64 if fractional else torch.int64).reshape(heads, width)


def draw_case(seed: int, device: str) -> Case:
    rng = random.Random(seed)
    if device == "cuda":
        dtype = rng.choice([torch.float16, torch.bfloat16, torch.float32, torch.float64])
        head_dim = rng.choice([16, 32, 64, 128])
    else:
        dtype = rng.choice([torch.float32, torch.float64, torch.float64, torch.bfloat16])
        head_dim = rng.choice([1, 2, 3, 8, 16])
    heads_kv = rng.randint(1, 3)
    heads = heads_kv * rng.randint(1, 3)
    # On CUDA past 64 queries, so that the Hopper forward's 64-query blocks meet
    # a sequence's start at any shift.
    seqlen_k = rng.randint(1, 200 if device == "cuda" else 48)
    seqlen_q = rng.choice([seqlen_k, rng.randint(1, seqlen_k)])
    window = rng.choice([1, rng.randint(1, 20), rng.randint(1, seqlen_k + 3), 10**9])
    offsets = _offsets(rng, min(window, 10**4), heads, seqlen_k, rng.random() < 0.5)
    if not offsets.is_floating_point() and window == 10**9:
        offsets = offsets[..., :0]  # integer distances must be >= window
    batch = rng.randint(1, 2)
    injections = []
    if rng.random() < 0.7:
        for _ in range(rng.randint(1, 3)):
            name = rng.choice(["q", "k", "v"])
            rows, row_heads = (seqlen_q, heads) if name == "q" else (seqlen_k, heads_kv)
            value = rng.choice([float("nan"), float("inf"), float("-inf"), HUGE[dtype], -HUGE[dtype]])
            injections.append((name, rng.randrange(batch), rng.randrange(rows), rng.randrange(row_heads),
                               rng.randrange(head_dim), value))
    layout = rng.choice(["contiguous", "contiguous", "sliced", "transposed"])
    return Case(seed, device, dtype, batch, seqlen_q, seqlen_k, heads, heads_kv, head_dim, window, offsets,
                injections, layout)


def _with_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """x's values in a tensor with other strides (rows must stay contiguous)."""
    if layout == "sliced":  # every other head of a wider tensor
        wide = torch.empty(x.shape[0], x.shape[1], 2 * x.shape[2], x.shape[3], dtype=x.dtype, device=x.device)
        wide[:, :, ::2] = x
        return wide[:, :, ::2]
    if layout == "transposed":  # (batch, heads, seqlen, dim) storage
        return x.transpose(1, 2).contiguous().transpose(1, 2)
    return x


def make_inputs(case: Case):
    """q, k, v in float64 on the CPU with the injections, and the gradients' weights."""
    generator = torch.Generator().manual_seed(case.seed)
    shapes = {"q": (case.batch, case.seqlen_q, case.heads, case.head_dim),
              "k": (case.batch, case.seqlen_k, case.heads_kv, case.head_dim),
              "v": (case.batch, case.seqlen_k, case.heads_kv, case.head_dim)}
    tensors = {name: torch.randn(shape, generator=generator, dtype=torch.float64) for name, shape in shapes.items()}
    for name, b, row, head, column, value in case.injections:
        tensors[name][b, row, head, column] = value
    grad_out = torch.randn(shapes["q"], generator=generator, dtype=torch.float64)
    grad_lse = torch.randn(case.batch, case.heads, case.seqlen_q, generator=generator, dtype=torch.float64)
    return tensors, grad_out, grad_lse


def _forward_backward(attention, tensors, offsets, window, grad_out, grad_lse):
    leaves = [t.detach().requires_grad_(True) for t in tensors]
    if offsets.is_floating_point():
        offsets = offsets.detach().requires_grad_(True)
    out, lse = attention(*leaves, window, offsets, return_lse=True)
    inputs = leaves + ([offsets] if offsets.requires_grad else [])
    grads = torch.autograd.grad([out, lse], inputs, [grad_out.to(out.dtype), grad_lse.to(lse.dtype)],
                                allow_unused=True)
    # A gradient autograd leaves unset (an input nothing reads) is zero.
    grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]
    results = {"out": out, "lse": lse, "dq": grads[0], "dk": grads[1], "dv": grads[2]}
    if offsets.requires_grad:
        results["doffsets"] = grads[3]
    return {name: t.detach().cpu().double() for name, t in results.items()}


def tensor_core_extent(case: Case, tensors: dict) -> torch.Tensor:
    """(batch, seqlen_q, heads) mask of the queries whose output the tensor-core
    forward may make non-finite beyond the reference: every query of a 16-query
    tile whose staged key rows include a non-finite key or value row, i.e. of a
    tile with a band chunk or offset strip within 16 rows of it; on the Hopper
    forward, every query of a 64-query block that stages the row: its band
    chunks of 64 rows ending at its last query, or its 64-row offset strips
    (with the row before a strip, for a position that is not whole)."""
    extent = torch.zeros(case.batch, case.seqlen_q, case.heads, dtype=torch.bool)
    bad_rows = ~(torch.isfinite(tensors["k"]) & torch.isfinite(tensors["v"])).all(-1)  # (batch, seqlen_k, heads_kv)
    window = min(case.window, case.seqlen_k)
    shift = case.seqlen_k - case.seqlen_q
    group = case.heads // case.heads_kv
    offsets = case.offsets.expand(case.heads, case.offsets.shape[-1]) if case.offsets.dim() == 1 else case.offsets
    for b, j, hk in bad_rows.nonzero().tolist():
        for h in range(hk * group, (hk + 1) * group):
            # (whole part, 1 if not whole): a position a + f with f > 0 also reads row a + 1 back.
            strips = [(int(torch.floor(o)), int(o != torch.floor(o))) for o in offsets[h].double() if o >= 0]
            for tile0 in range(0, case.seqlen_q, TILE):
                pos = tile0 + shift
                near_band = pos - window + 1 - (TILE - 1) <= j <= pos + 2 * TILE - 2
                near_offset = any(pos - w - 1 <= j <= pos - w + TILE - 1 for w, _ in strips)
                if near_band or near_offset:
                    extent[b, tile0:tile0 + TILE, h] = True
            if not case.hopper_forward:
                continue
            chunks = -(-(window + HOPPER_TILE - 1) // HOPPER_TILE)
            for tile0 in range(0, case.seqlen_q, HOPPER_TILE):
                pos = tile0 + shift
                near_band = pos + HOPPER_TILE * (1 - chunks) <= j <= pos + HOPPER_TILE - 1
                near_offset = any(pos - w - before <= j <= pos - w + HOPPER_TILE - 1 for w, before in strips)
                if near_band or near_offset:
                    extent[b, tile0:tile0 + HOPPER_TILE, h] = True
    return extent


def tensor_core_key_extent(case: Case, tensors: dict, bad_queries: torch.Tensor) -> torch.Tensor:
    """(batch, seqlen_k, heads_kv) mask of the keys whose dk, dv the tensor-core
    backward may make non-finite beyond the reference: every key of a 16-key
    tile that holds a non-finite key or value row, or that stages a query row
    with a non-finite q, output or lse (`bad_queries`, (batch, seqlen_q, heads)):
    band readers within 15 positions of [key, key + window - 1], and each
    offset's strip of 17 readers."""
    extent = torch.zeros(case.batch, case.seqlen_k, case.heads_kv, dtype=torch.bool)
    bad_rows = ~(torch.isfinite(tensors["k"]) & torch.isfinite(tensors["v"])).all(-1)
    for b, j, hk in bad_rows.nonzero().tolist():
        extent[b, j - j % TILE:j - j % TILE + TILE, hk] = True
    window = min(case.window, case.seqlen_k)
    shift = case.seqlen_k - case.seqlen_q
    group = case.heads // case.heads_kv
    offsets = case.offsets.expand(case.heads, case.offsets.shape[-1]) if case.offsets.dim() == 1 else case.offsets
    for b, i, h in bad_queries.nonzero().tolist():
        pos = i + shift
        wholes = [int(torch.floor(o)) for o in offsets[h].double() if o >= 0]
        for tile0 in range(0, case.seqlen_k, TILE):
            near_band = tile0 - (TILE - 1) <= pos <= tile0 + window + 2 * TILE - 3
            near_offset = any(tile0 + w - 1 <= pos <= tile0 + w + TILE for w in wholes)
            if near_band or near_offset:
                extent[b, tile0:tile0 + TILE, h // group] = True
    return extent


def _close(name, got, want, dtype):
    where = torch.isfinite(want) & torch.isfinite(got)
    if got.dim() == 4:  # whole rows only
        where = (where.all(-1, keepdim=True)).expand_as(got)
    diff = (got[where] - want[where]).norm()
    scale = want[where].norm().clamp_min(1e-30)
    assert diff <= TOLERANCE[dtype] * scale + 1e-30, f"{name}: relative error {(diff / scale).item():.2e}"


def _tensor_core_extents(case: Case, tensors: dict, got: dict) -> dict:
    """Where each row-wise result of the tensor-core path may be non-finite
    beyond the reference (its rows: queries for out and dq, keys for dk, dv)."""
    rounded = {n: t.to(case.dtype).double() for n, t in tensors.items()}
    # A query holding an infinite element: a fractional position's scores are
    # mixed as scores (s0 + f (s1 - s0)) there, where -inf - -inf is NaN.
    out = tensor_core_extent(case, rounded) | ~torch.isfinite(rounded["q"]).all(-1)
    # The backward reads the forward's results: a query whose out or lse is
    # non-finite spreads like a non-finite key row does, in the tiles that stage it.
    bad_queries = out | ~torch.isfinite(got["out"]).all(-1) | ~torch.isfinite(got["lse"]).transpose(1, 2)
    keys = tensor_core_key_extent(case, rounded, bad_queries)
    return {"out": out, "dq": bad_queries, "dk": keys, "dv": keys}


def check_case(case: Case) -> None:
    tensors, grad_out, grad_lse = make_inputs(case)
    kernel_inputs = [_with_layout(tensors[n].to(case.device, case.dtype), case.layout) for n in "qkv"]
    position_dtype = torch.float64 if case.dtype == torch.float64 else torch.float32
    kernel_offsets = case.offsets.to(case.device, position_dtype if case.fractional else torch.int32)
    got = _forward_backward(fibsparse_attn, kernel_inputs, kernel_offsets, case.window,
                            grad_out.to(case.device), grad_lse.to(case.device))
    # The reference sees the values the kernel saw (rounded to its dtype), in its accumulation precision.
    accumulate = torch.float64 if case.dtype == torch.float64 else torch.float32
    reference_inputs = [t.to(case.dtype).to(accumulate) for t in (tensors[n] for n in "qkv")]
    want = _forward_backward(fibsparse_attn_ref, reference_inputs,
                             case.offsets.to(accumulate) if case.fractional else case.offsets, case.window,
                             grad_out, grad_lse)
    context = f"case {case}"
    # A huge finite value makes the problem ill-conditioned (a score of 1e30 is
    # rounded by 1e23; <dout, v> - <dout, out> of 1e30 values is mostly rounding),
    # so there only the forward's non-finite structure is compared.
    huge = any(abs(x) == HUGE[case.dtype] for *_, x in case.injections)
    extents = _tensor_core_extents(case, tensors, got) if case.tensor_cores else {}
    for name in (("out", "lse") if huge else want):
        # Rows (a query's or key's head_dim values) are the unit: which of a
        # non-finite row's elements are NaN may differ (0 * inf in one column).
        finite_got, finite_want = torch.isfinite(got[name]), torch.isfinite(want[name])
        if name in ("out", "dq", "dk", "dv"):
            finite_got, finite_want = finite_got.all(-1), finite_want.all(-1)
        if not case.tensor_cores or name == "lse":
            mismatch = (finite_got != finite_want).nonzero().tolist()
            assert not mismatch, f"{name}: non-finite where the reference is not, or the reverse, at {mismatch[:5]}; {context}"
        elif name == "doffsets" and case.injections:
            pass  # its structure on tensor cores: see docs (the position sums every query's terms)
        else:
            missing = (finite_got & ~finite_want).nonzero().tolist()
            assert not missing, f"{name}: finite where the reference is not, at {missing[:5]}; {context}"
            extent = extents[name] if name in extents else None
            if extent is not None:
                beyond = (~finite_got & finite_want & ~extent).nonzero().tolist()
                assert not beyond, f"{name}: non-finite outside the tensor-core extent at {beyond[:5]}; {context}"
        # d/d(position) sums many cancelling terms; from 16-bit outputs it is
        # only as accurate as they are, so for those only its structure counts.
        if huge or (name == "doffsets" and case.dtype in (torch.float16, torch.bfloat16)):
            continue
        try:
            _close(name, got[name], want[name], case.dtype)
        except AssertionError as e:
            raise AssertionError(f"{e}; {context}") from None
