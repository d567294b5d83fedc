"""The Hopper forward with two heads a warpgroup scores a fractional strip's
rows one back from the strip's own tile of scores: query g's row one back is
row g - 1 of its strip, already scored, and only the warp's first query needs
a row of its own (the row before the warp's first, for warp 0 the prefix's
last), which both strips of a step take in one tile. With
FIBSPARSE_FWD_BACK_SCORES_FROM_TILE=0 each fractional strip is scored against
its rows one back in a tile of their own. Both give lse within float rounding
and every output row up to rounding, dense and packed, each warp's first
query against the float64 reference; a NaN or inf key row reaches only the
queries that read it; a bad value of the switch is refused before any kernel
runs."""
import pytest
import torch

from fibsparse_ext import fibsparse_attn, fibsparse_attn_ref, fibsparse_attn_varlen, fibsparse_attn_varlen_ref

from utils import (HOPPER, assert_refused_before_any_kernel, assert_rows_match, cuda_kernels_of, fibonacci_offsets,
                   gqa_forward_call, packed, random_rows, readers, rel_err, requires_cuda, template_arguments)

SWITCH = "FIBSPARSE_FWD_BACK_SCORES_FROM_TILE"
requires_hopper = pytest.mark.skipif(not HOPPER, reason="needs a compute capability 9.0 GPU and an sm_90a build")

# A step holds two consecutive positions (offsets 0 and 1, 2 and 3, ..), one
# strip each. A short window and few positions: a query has ~20 terms, so a
# wrong back score moves its row far past rounding. Steps where both strips
# are fractional, where only the first or only the second is (the other
# whole), and a last step of one strip.
WINDOW = 16
POSITIONS = {"both, second whole, alone": [16.875, 29.125, 50.5, 70.0, 200.5],
             "first whole, both": [16.0, 29.75, 50.25, 70.5]}


def switches_cleared(monkeypatch):
    for switch in ("FIBSPARSE_HOPPER", "FIBSPARSE_HOPPER_PACK", "FIBSPARSE_HOPPER_TILES",
                   "FIBSPARSE_FWD_TWO_DIAGONALS", SWITCH):
        monkeypatch.delenv(switch, raising=False)


def assert_back_scores_match(monkeypatch, attend, reference, first_queries):
    """attend() (out, lse) with the back scores from the strip's tile (the
    default) and with a tile of their own: lse within float rounding, every
    output row up to rounding, both within the accuracy contract of the
    float64 reference, and `first_queries` (the rows of each warp's first
    query, whose row one back is the row before its strip's first) row by row."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    switches_cleared(monkeypatch)
    (out, lse), kernels = cuda_kernels_of(attend)
    assert template_arguments(kernels, "fwd_hopper_kernel")[-3:] == ["true", "true", "true"], kernels
    monkeypatch.setenv(SWITCH, "0")
    (out_off, lse_off), kernels = cuda_kernels_of(attend)
    assert template_arguments(kernels, "fwd_hopper_kernel")[-3:] == ["true", "true", "false"], kernels
    assert lse.isfinite().all() and out.isfinite().all()
    assert (lse - lse_off).abs().max() <= 1e-5 * max(1.0, lse.abs().max().item())
    assert_rows_match("out", out, out_off)
    for got in (out, out_off):
        assert rel_err(got, reference) < 1e-2
        rows = got[first_queries].double() - reference[first_queries]
        row_err = rows.norm(dim=-1) / reference[first_queries].norm(dim=-1)
        assert row_err.max() < 3e-2, row_err.max()


@requires_hopper
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("positions", list(POSITIONS))
@pytest.mark.parametrize("batch,seqlen,heads", [(1, 640, 8), (2, 1000, 16)])
def test_hopper_back_scores_from_the_strips_tile(monkeypatch, dtype, head_dim, positions, batch, seqlen, heads):
    """GQA groups of 4 (two heads a warpgroup, 32-query tiles, a warp's 8
    queries), a ragged last tile, two sequences."""
    q = random_rows((batch, seqlen, heads, head_dim), dtype, seqlen + head_dim)
    k, v = (random_rows((batch, seqlen, heads // 4, head_dim), dtype, seqlen + i) for i in (1, 2))
    offsets = torch.tensor(POSITIONS[positions], device="cuda")
    reference = fibsparse_attn_ref(q.double(), k.double(), v.double(), WINDOW, offsets.double())
    assert_back_scores_match(monkeypatch, lambda: fibsparse_attn(q, k, v, WINDOW, offsets, return_lse=True),
                             reference, (slice(None), slice(0, None, 8)))


@requires_hopper
@requires_cuda
def test_hopper_packed_back_scores_from_the_strips_tile(monkeypatch):
    """A packed batch (sequences of 0, 1, 8, 9, 33 and more queries: ragged
    tiles and warps, sequences shorter than a position)."""
    lengths = [700, 1, 0, 8, 9, 33, 129, 300]
    cu, longest = packed(lengths, "cuda")
    dtype, head_dim = torch.bfloat16, 128
    offsets = torch.tensor(POSITIONS["both, second whole, alone"], device="cuda")
    q = random_rows((sum(lengths), 8, head_dim), dtype, 50)
    k, v = (random_rows((sum(lengths), 2, head_dim), dtype, 51 + i) for i in range(2))
    reference = fibsparse_attn_varlen_ref(q.double(), k.double(), v.double(), cu, cu, longest, longest, WINDOW,
                                          offsets.double())
    # Each sequence's warps start at its own query 0.
    first = torch.cat([torch.arange(start, end, device="cuda")[::8]
                       for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()) if end > start])
    assert_back_scores_match(
        monkeypatch,
        lambda: fibsparse_attn_varlen(q, k, v, cu, cu, longest, longest, WINDOW, offsets, return_lse=True),
        reference, first)


@requires_hopper
@requires_cuda
@pytest.mark.parametrize("setting", ["1", "0"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("key", [39, 42, 47, 57, 63, 64])
def test_hopper_non_finite_key_row_reaches_only_its_readers(monkeypatch, setting, value, key):
    """A NaN or inf key row (of both kv heads): the queries whose output is
    not finite are the row's readers, in every head (keys stay exact on the
    Hopper forward, docs/semantics.md). Rows 39 and 63 are the rows one back
    of warps' first queries (56 and 80) at position 16.5, the first strip of
    a step whose second is fractional too; 47 that of query 64, a tile's
    first, so the last row of the strip's prefix; 42 that of query 72 at
    29.875, that step's second strip; 57 that of query 128 at 70.25, the
    second strip of a step whose first is whole; 64 none's."""
    switches_cleared(monkeypatch)
    monkeypatch.setenv(SWITCH, setting)
    seqlen, head_dim, positions = 200, 64, [16.5, 29.875, 50.0, 70.25]
    q = random_rows((1, seqlen, 8, head_dim), torch.bfloat16, 60)
    k, v = (random_rows((1, seqlen, 2, head_dim), torch.bfloat16, 61 + i) for i in range(2))
    k[0, key] = value
    offsets = torch.tensor(positions, device="cuda")
    out, kernels = cuda_kernels_of(lambda: fibsparse_attn(q, k, v, WINDOW, offsets))
    assert template_arguments(kernels, "fwd_hopper_kernel")[-1] == ("true" if setting == "1" else "false"), kernels
    expected = readers(seqlen, WINDOW, positions, key)
    for head in range(8):
        bad = set((~out[0, :, head].isfinite().all(-1)).nonzero().flatten().tolist())
        assert bad == expected, (head, sorted(bad ^ expected))


@requires_cuda
@pytest.mark.parametrize("fractional", [True, False])
@pytest.mark.parametrize("setting", ["off", "2"])
def test_cuda_back_scores_switch_is_checked(monkeypatch, setting, fractional):
    """The switch takes 0 or 1: any other value is refused, naming the
    variable, what it got and what it takes, before any kernel of the forward
    runs (the Hopper forward, a GQA group of 4), with integer offsets too."""
    if not HOPPER:
        pytest.skip("the Hopper forward reads it")
    switches_cleared(monkeypatch)
    assert_refused_before_any_kernel(monkeypatch, SWITCH, setting,
                                     gqa_forward_call(fibonacci_offsets(128, 300, fractional), 128))
