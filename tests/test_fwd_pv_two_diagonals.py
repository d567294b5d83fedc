"""The Hopper forward with one head a warpgroup adds a fractional strip's P V
in one two-diagonal product at head_dim 64: f P and (1 - f) P on two
diagonals against the strip's rows one back, and query 15's first row (the
strip's row 15, outside that tile) in a 16 x 8 product whose one weight is
query 15's. FIBSPARSE_FWD_PV_TWO_DIAGONALS=0 takes two diagonal products. The
same terms summed in another order: lse is bitwise equal, every output row
within rounding of the switch's, both within the float64 reference's
contract, each warp's query 15 and each tile's first query (its row one back
is the strip's prefix) row by row; whole positions among fractional ones, MHA
and kv groups of two, queries shifted against the keys, several tiles a
block, every output poisoned first. Head_dim 128 keeps two products; a bad
value of the switch is refused before any kernel runs."""
import pytest
import torch

from fibsparse_ext import fibsparse_attn, fibsparse_attn_ref

from utils import (FRACTIONAL_POSITIONS, FRACTIONAL_WINDOW, HOPPER, assert_refused_before_any_kernel,
                   assert_rows_match, cuda_kernels_of, fibonacci_offsets, gqa_forward_call, random_rows, rel_err,
                   requires_cuda, template_arguments)

SWITCH = "FIBSPARSE_FWD_PV_TWO_DIAGONALS"
NEEDED = ("FIBSPARSE_HOPPER", "FIBSPARSE_HOPPER_PACK", "FIBSPARSE_HOPPER_TILES", "FIBSPARSE_FWD_SUBDIAGONAL")
WINDOW, POSITIONS = FRACTIONAL_WINDOW, FRACTIONAL_POSITIONS

hopper_only = pytest.mark.skipif(not HOPPER, reason="needs a compute capability 9.0 GPU and an sm_90a build")


def pv_two_diagonals(kernels):
    """fwd_hopper_kernel's eighth template argument, kPvTwoDiagonals (absent: false)."""
    arguments = template_arguments(kernels, "fwd_hopper_kernel")
    return arguments[7] if len(arguments) > 7 else "false"


def assert_rows_near_reference(name, got, ref, rows):
    """The rows `rows` (a slice of positions) of every head within 3% of the
    float64 reference's row norm."""
    error = (got[:, rows].double() - ref[:, rows]).norm(dim=-1) / ref[:, rows].norm(dim=-1)
    assert error.max() < 3e-2, (name, error.max().item())


@hopper_only
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("positions", list(POSITIONS))
@pytest.mark.parametrize("batch,seqlen_q,seqlen_k,heads,heads_kv,tiles_per_block", [
    (1, 640, 640, 4, 4, None),      # MHA: one warpgroup a block
    (2, 1000, 1000, 4, 2, None),    # a kv group of two: two warpgroups a block; a ragged last tile
    (1, 300, 777, 2, 2, None),      # queries shifted by 477
    (1, 4096, 4096, 2, 2, "3"),     # three tiles a block
])
def test_hopper_forward_pv_two_diagonals(monkeypatch, dtype, positions, batch, seqlen_q, seqlen_k, heads, heads_kv,
                                       tiles_per_block):
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    for switch in (SWITCH, *NEEDED):
        monkeypatch.delenv(switch, raising=False)
    if tiles_per_block is not None:
        monkeypatch.setenv("FIBSPARSE_HOPPER_TILES", tiles_per_block)
    q = random_rows((batch, seqlen_q, heads, 64), dtype, seqlen_q + 64)
    k, v = (random_rows((batch, seqlen_k, heads_kv, 64), dtype, seqlen_k + i) for i in (1, 2))
    offsets = torch.tensor(POSITIONS[positions], device="cuda")
    (out, lse), kernels = cuda_kernels_of(lambda: fibsparse_attn(q, k, v, WINDOW, offsets, return_lse=True))
    assert pv_two_diagonals(kernels) == "true", kernels
    monkeypatch.setenv(SWITCH, "0")
    (out_two, lse_two), kernels = cuda_kernels_of(lambda: fibsparse_attn(q, k, v, WINDOW, offsets, return_lse=True))
    assert pv_two_diagonals(kernels) == "false", kernels
    assert torch.equal(lse, lse_two)
    assert out.isfinite().all()
    assert_rows_match("out", out, out_two)
    ref = fibsparse_attn_ref(q.double(), k.double(), v.double(), WINDOW, offsets.double())
    assert rel_err(out, ref) < 1e-2
    # Each warp's query 15 takes its first row from the 16 x 8 product; each
    # tile's first query its row one back from the prefix.
    assert_rows_near_reference("query 15", out, ref, slice(15, None, 16))
    assert_rows_near_reference("first", out, ref, slice(0, None, 64))


@hopper_only
@requires_cuda
def test_hopper_forward_pv_two_diagonals_at_head_dim_64_alone(monkeypatch):
    """At head_dim 128 the forward takes two diagonal products, the switch unset."""
    for switch in (SWITCH, *NEEDED):
        monkeypatch.delenv(switch, raising=False)
    q = random_rows((1, 640, 2, 128), torch.bfloat16, 5)
    k, v = (random_rows((1, 640, 2, 128), torch.bfloat16, i) for i in (6, 7))
    offsets = torch.tensor(POSITIONS["f=0.875"], device="cuda")
    _, kernels = cuda_kernels_of(lambda: fibsparse_attn(q, k, v, WINDOW, offsets))
    assert template_arguments(kernels, "fwd_hopper_kernel")[5:7] == ["true", "true"], kernels
    assert pv_two_diagonals(kernels) == "false", kernels


@hopper_only
@requires_cuda
@pytest.mark.parametrize("fractional", [True, False])
@pytest.mark.parametrize("setting", ["off", "2"])
def test_hopper_forward_pv_two_diagonals_switch_is_checked(monkeypatch, setting, fractional):
    """The switch takes 0 or 1: any other value is refused, naming the
    variable, what it got and what it takes, before any kernel of the call
    runs, with integer offsets too."""
    offsets = fibonacci_offsets(128, 300, fractional)
    assert_refused_before_any_kernel(monkeypatch, SWITCH, setting, gqa_forward_call(offsets, 64))
