"""The Hopper forward (warpgroup products fed by TMA, csrc/cuda/fwd_hopper_kernel.cuh):
that it is the kernel a compute capability 9.0 GPU runs for 16-bit inputs with
integer or fractional offsets (or none: the window alone) on dense and packed
batches (a packed batch's sequences through tensor maps of their own rows); that
it matches the float64 reference and the mma.sync forward (FIBSPARSE_HOPPER=0)
where its geometry differs from theirs (band chunks that start before key 0,
lengths that are not multiples of 64, fewer queries than keys, windows of one key
up to the whole sequence, padded, per-head and fractional offsets, GQA heads paired in one
block, two heads a warpgroup, several tiles per block, clusters); where it declines; and, without a GPU,
that ptxas compiles it without serializing its wgmma."""
import importlib.util
import os
import re
import shutil
import subprocess

import pytest
import torch

from fibsparse_ext import build_info, fibsparse_attn, fibsparse_attn_ref, fibsparse_attn_varlen
from utils import HOPPER, cuda_kernels_of, packed, random_offsets, random_qkv, rel_err, requires_cuda


def requires_hopper(test):
    """Decorator: `test` runs on a compute capability 9.0 GPU with an sm_90a build (marked `cuda`)."""
    return pytest.mark.skipif(not HOPPER, reason="needs a compute capability 9.0 GPU and an sm_90a build")(
        requires_cuda(test))


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)


@pytest.mark.skipif(NVCC is None or torch.version.cuda is None or not build_info()["cuda"],
                    reason="needs nvcc and a CUDA build of torch and of this extension")
@pytest.mark.parametrize("source", ["fwd_bf16.cu", "fwd_fp16.cu"])
def test_ptxas_keeps_the_hopper_forwards_wgmma_asynchronous(tmp_path, source):
    """ptxas serializes every wgmma of a kernel where it cannot keep them
    asynchronous (a function call in the kernel, such as a device-side assert:
    "C7510"; a write to an accumulator while a product may still be running:
    "C7515"), and says so only as information ("Potential Performance Loss"):
    the kernel stays correct and loses its pipelining. Compiled here for
    sm_90a, no Hopper forward may carry that report, or spill."""
    # tools/compare_sass.py builds the kernels outside setup.py too: its include flags.
    spec = importlib.util.spec_from_file_location("compare_sass", os.path.join(ROOT, "tools", "compare_sass.py"))
    compare_sass = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare_sass)
    home = os.path.dirname(os.path.dirname(os.path.realpath(NVCC)))
    command = [NVCC, "-std=c++20", "-O3", "--expt-relaxed-constexpr", "-gencode", "arch=compute_90a,code=sm_90a",
               "-DFIBSPARSE_WITH_CUDA", "-DFIBSPARSE_HOPPER_KERNELS", "-Xptxas", "-v",
               *compare_sass.include_flags(home, str(tmp_path)), "-c", os.path.join(ROOT, "csrc", "cuda", source),
               "-o", str(tmp_path / "kernels.o")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = result.stdout + result.stderr
    kernels = re.findall(r"Compiling entry function '(\w*fwd_hopper_kernel\w*)'", report)
    # head_dim 64 and 128; integer offsets: one head, two, two in clusters of two blocks, four (two a
    # warpgroup); fractional: one head and two (the rows one back scored by a second product or from the
    # tile's subdiagonal, and at head_dim 64 with that P V in one two-diagonal product), four (with P V in
    # two products or in one)
    assert len(kernels) == 22, report[-3000:]
    assert "Performance Loss" not in report, [line for line in report.splitlines() if "Performance Loss" in line]
    for kernel in kernels:
        spills = re.search(rf"Function properties for {kernel}\s+\d+ bytes stack frame, (\d+) bytes spill stores",
                           report)
        assert spills is not None and spills.group(1) == "0", (kernel, spills and spills.group(0))


@pytest.mark.parametrize("tiles_per_sequence, slices, resident_blocks, window_alone, four_spans_pay, expected", [
    (2048, 16, 132, True, False, 32),  # 128k GQA 32/8 on 132 SMs: 1024 blocks, 8 waves, 97% of their slots busy
    (2048, 16, 132, False, False, 2),  # the same with offsets, blocks not alone or rows past the L2: 2, 61 waves
    (256, 16, 132, True, False, 32),   # 16k GQA: 128 blocks, one wave 97% busy
    (1024, 8, 264, True, False, 32),   # 64k MHA d 64, two blocks per SM: 256 blocks, one wave 97% busy
    (16, 256, 132, True, False, 16),   # 1k x 16 GQA: no more tiles than a sequence has
    (100, 10, 132, True, False, 8),    # 130 blocks of 8 fill one wave; 70 of 16 would leave 47% idle
    (528, 1, 132, True, False, 4),     # 132 blocks of 4; 66 of 8 leave half the GPU idle
    (300, 1, 132, True, False, 1),     # no count keeps 90% of the slots busy: the most blocks
    (8, 4, 132, True, False, 1),       # a small grid
    (1, 64, 132, True, False, 1),      # one tile per sequence
    (1, 64, 132, False, False, 1),
    (16, 4, 132, False, False, 1),     # with offsets, two tiles only where the grid stays 8 waves deep
    (8448, 1, 132, False, False, 2),   # 4224 blocks of 2 = 32 waves
    (2111, 1, 264, False, False, 1),   # 1056 blocks of 2: just under 8 waves of 264
    # Where four spans pay (below): four tiles where that leaves 3 waves.
    (1024, 8, 132, False, True, 4),    # 64k GQA 32/8 d 128: 2048 blocks of 4, 15.5 waves
    (256, 8, 132, False, True, 4),     # 16k: 512 blocks of 4, 3.9 waves (one tile without the L2 rule)
    (2048, 8, 132, False, False, 2),   # 128k: a kv head's rows are more than the L2 holds
    (128, 8, 132, False, True, 1),     # 8k: 256 blocks of 4 are under 3 waves, 512 of 2 under 8
    (2048, 16, 132, True, True, 32),   # the window alone keeps its rule
])
def test_hopper_tiles_per_block_rule(tiles_per_sequence, slices, resident_blocks, window_alone, four_spans_pay,
                                     expected):
    """The rule the Hopper forward's launch applies (hopper_tiles.h): with
    offsets two tiles a block where the grid stays 8 waves deep, four where
    four spans pay (test_hopper_four_spans_pay) and the grid stays 3 waves
    deep; the window alone the most (a power of two up to 32) that leave at
    most 10% of the slots of the waves it needs idle. Pure arithmetic: runs on any build."""
    from fibsparse_ext import _C
    assert _C._hopper_tiles_per_block(tiles_per_sequence, slices, resident_blocks, window_alone,
                                      four_spans_pay) == expected


L2_H200 = 60 << 20


@pytest.mark.parametrize("blocks_per_sm, fractional, heads_per_warpgroup, kv_head_bytes, expected", [
    (1, False, 2, 65536 * 128 * 2 * 2, True),    # 64k GQA d 128: 32 MiB of k and v rows
    (1, True, 2, 65536 * 128 * 2 * 2, True),     # the same with fractional positions (8 queries of both heads a warp)
    (1, True, 1, 65536 * 128 * 2 * 2, False),    # fractional, one head a warpgroup: four not faster everywhere
    (1, False, 1, 65536 * 128 * 2 * 2, True),    # integer offsets, one head a warpgroup
    (1, False, 2, 131072 * 128 * 2 * 2, False),  # 128k d 128: 64 MiB, past the H200's 60
    (1, True, 2, 131072 * 128 * 2 * 2, False),
    (1, False, 2, L2_H200, True),                # exactly the L2
    (1, False, 2, L2_H200 + 1, False),
    (2, False, 1, 65536 * 64 * 2 * 2, False),    # blocks two to an SM (one warpgroup each)
    (2, True, 1, 65536 * 64 * 2 * 2, False),
])
def test_hopper_four_spans_pay(blocks_per_sm, fractional, heads_per_warpgroup, kv_head_bytes, expected):
    """Where blocks of the Hopper forward walk four spans (hopper_tiles.h):
    alone on their SM, a kv head's rows within the L2, and not fractional
    positions with one head a warpgroup. Pure arithmetic: runs on any build."""
    from fibsparse_ext import _C
    assert _C._hopper_four_spans_pay(blocks_per_sm, fractional, heads_per_warpgroup, kv_head_bytes,
                                     L2_H200) is expected


def forward_kernels(q, k, v, window, offsets):
    """The CUDA kernels one forward launches (their names, from the profiler)."""
    return cuda_kernels_of(lambda: fibsparse_attn(q, k, v, window, offsets))[1]


def forward_with(setting, q, k, v, window, offsets):
    """out, lse with FIBSPARSE_HOPPER set to `setting` ("1": the Hopper forward where it applies, "0": mma.sync)."""
    previous = os.environ.get("FIBSPARSE_HOPPER")
    os.environ["FIBSPARSE_HOPPER"] = setting
    try:
        return fibsparse_attn(q, k, v, window, offsets, return_lse=True)
    finally:
        if previous is None:
            del os.environ["FIBSPARSE_HOPPER"]
        else:
            os.environ["FIBSPARSE_HOPPER"] = previous


@requires_hopper
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_the_hopper_forward_is_what_runs(monkeypatch, dtype, head_dim):
    monkeypatch.delenv("FIBSPARSE_HOPPER", raising=False)
    q, k, v = random_qkv(1, 256, 4, 2, head_dim, dtype, "cuda", requires_grad=False)
    offsets = torch.tensor([130, 211], device="cuda", dtype=torch.int32)
    names = forward_kernels(q, k, v, 128, offsets)
    assert any("fwd_hopper_kernel" in n for n in names), names
    monkeypatch.setenv("FIBSPARSE_HOPPER", "0")
    names = forward_kernels(q, k, v, 128, offsets)
    assert not any("fwd_hopper_kernel" in n for n in names) and any("fwd_mma_kernel" in n for n in names), names


@requires_hopper
def test_the_hopper_forward_declines_what_it_does_not_take():
    """Head_dim 32 and a batch stride TMA cannot take (0: k and v broadcast over
    the batch) run on the mma.sync forward; integer and fractional offsets and
    the window alone (no offsets) run here at head_dim 64 and 128."""
    q, k, v = random_qkv(2, 256, 2, 2, 64, torch.bfloat16, "cuda", requires_grad=False)
    integer = torch.tensor([130, 211], device="cuda", dtype=torch.int32)
    assert any("fwd_hopper_kernel" in n for n in forward_kernels(q, k, v, 128, integer))
    fractional = torch.tensor([130.5, 211.25], device="cuda")
    assert any("fwd_hopper_kernel" in n for n in forward_kernels(q, k, v, 128, fractional))
    assert any("fwd_hopper_kernel" in n for n in forward_kernels(q, k, v, 128, integer[:0]))
    q128, k128, v128 = random_qkv(1, 256, 2, 2, 128, torch.bfloat16, "cuda", requires_grad=False)
    assert any("fwd_hopper_kernel" in n for n in forward_kernels(q128, k128, v128, 128, integer[:0]))
    q32, k32, v32 = random_qkv(1, 256, 2, 2, 32, torch.bfloat16, "cuda", requires_grad=False)
    assert not any("fwd_hopper_kernel" in n for n in forward_kernels(q32, k32, v32, 128, integer))
    k_shared, v_shared = k[:1].expand(2, -1, -1, -1), v[:1].expand(2, -1, -1, -1)
    assert k_shared.stride(0) == 0
    names = forward_kernels(q, k_shared, v_shared, 128, integer)
    assert not any("fwd_hopper_kernel" in n for n in names) and any("fwd_mma_kernel" in n for n in names), names


CASES = [
    # (batch, seqlen_q, seqlen_k, heads, heads_kv, head_dim, window, offsets)
    (1, 300, 300, 2, 2, 64, 128, "random"),     # MHA, a partial last block
    (1, 100, 130, 4, 2, 64, 128, "random"),     # keys before 0 inside chunks: positions shifted by 30
    (1, 150, 333, 4, 4, 128, 300, "per_head"),  # the same at head_dim 128, a shift of 183, 6 chunks
    (2, 77, 200, 8, 2, 128, 250, "random"),     # the same with two heads per block and batch 2
    (2, 257, 257, 8, 2, 128, 128, "random"),    # GQA 4: two heads per block, batch 2
    (1, 70, 300, 6, 2, 64, 20, "random"),       # fewer queries than keys, a group of 3 (one head per block)
    (1, 130, 130, 4, 4, 128, 1, "random"),      # a window of one key
    (1, 200, 200, 2, 1, 64, 200, "random"),     # the window is the whole sequence (dense causal)
    (1, 190, 190, 4, 2, 64, 300, "padded"),     # a window past the sequence, offsets out of reach
    (1, 640, 640, 4, 2, 128, 64, "padding"),    # padding only: the window alone, GQA
    (1, 500, 500, 4, 4, 64, 100, "per_head"),   # per-head offsets (one head per block)
    (1, 333, 333, 4, 2, 128, 32, "padded"),     # padded shared offsets, paired heads
    (3, 64, 64, 2, 2, 128, 16, "random"),       # one block per sequence
    (1, 1, 5, 2, 2, 64, 3, "random"),           # one query
    # Fractional positions: a step at a + f (f > 0) stages the 8 rows before its strip too.
    (1, 300, 300, 2, 2, 64, 128, "fractional"),             # MHA, one head per block, a partial last block
    (2, 257, 257, 8, 2, 128, 128, "fractional"),            # GQA 4: two heads per block, batch 2
    (1, 150, 333, 4, 4, 128, 300, "fractional_per_head"),   # per-head rows, queries shifted by 183
    (1, 100, 130, 4, 2, 64, 20, "fractional_mixed"),        # whole and fractional positions, shifted by 30
    (1, 70, 300, 6, 2, 64, 20, "fractional"),               # a group of 3 (one head per block)
    (1, 190, 190, 4, 2, 128, 32, "fractional_padded"),      # padded shared positions, paired heads
]


def reference_offsets(offsets):
    """The offsets as the float64 reference takes them: positions as float64, distances as int64."""
    return offsets.double() if offsets.is_floating_point() else offsets.long()


def case_offsets(kind, window, heads, seqlen_k):
    if kind == "fractional_mixed":
        return torch.tensor([window + 0.0, window + 7.5, 2 * window + 3.0, 3 * window + 0.25], device="cuda")
    if kind == "fractional_padded":
        return torch.tensor([window + 0.5, window + 9.0, 3 * window + 1.75, -1, -1], device="cuda")
    if kind.startswith("fractional"):
        spread = max(2, seqlen_k // 8)
        return random_offsets(window, 6, heads if kind == "fractional_per_head" else None, True, "cuda",
                              dtype=torch.float32, spread=spread)
    if kind == "padding":
        return torch.tensor([-1, -1], dtype=torch.int32, device="cuda")
    if kind == "padded":
        return torch.tensor([window, window + 9, 3 * window + 1, -1, -1], dtype=torch.int32, device="cuda")
    spread = max(2, seqlen_k // 8)
    return random_offsets(window, 6, heads if kind == "per_head" else None, False, "cuda", spread=spread)


@requires_hopper
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES, ids=[f"b{c[0]}-q{c[1]}-k{c[2]}-h{c[3]}kv{c[4]}-d{c[5]}-w{c[6]}-{c[7]}"
                                              for c in CASES])
def test_hopper_forward_matches_reference_and_mma_forward(dtype, case):
    batch, seqlen_q, seqlen_k, heads, heads_kv, head_dim, window, kind = case
    torch.manual_seed(seqlen_q * 31 + head_dim + window)
    q, k, v = random_qkv(batch, seqlen_q, heads, heads_kv, head_dim, dtype, "cuda", seqlen_k=seqlen_k,
                         requires_grad=False)
    offsets = case_offsets(kind, window, heads, seqlen_k)
    assert any("fwd_hopper_kernel" in n for n in forward_kernels(q, k, v, window, offsets))
    out, lse = forward_with("1", q, k, v, window, offsets)
    mma_out, mma_lse = forward_with("0", q, k, v, window, offsets)
    ref_offsets = reference_offsets(offsets)
    ref_out, ref_lse = fibsparse_attn_ref(q.double(), k.double(), v.double(), window, ref_offsets, return_lse=True)
    for name, got, mma, want in (("out", out, mma_out, ref_out), ("lse", lse, mma_lse, ref_lse)):
        # The two kernels add the band in different orders: each within the
        # dtype's bound of the reference, and within 2x of the other's error.
        err, mma_err = rel_err(got, want), rel_err(mma, want)
        assert err < 1e-2 and err <= 2 * mma_err + 1e-3, f"{name}: {err:.2e} (mma.sync {mma_err:.2e})"
    # Gradients run on the backward kernels, from the Hopper forward's out and lse.
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    out = fibsparse_attn(q, k, v, window, offsets)
    grad = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
    inputs = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    ref = fibsparse_attn_ref(*inputs, window, ref_offsets)
    ref_grads = torch.autograd.grad(ref, inputs, grad.double())
    for name, got, want in zip(("dq", "dk", "dv"), (dq, dk, dv), ref_grads):
        assert rel_err(got, want) < 1e-2, f"{name}: {rel_err(got, want):.2e}"


@requires_hopper
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("fractional", [False, True])
def test_hopper_forward_is_deterministic_and_writes_every_output(monkeypatch, head_dim, fractional):
    """Outputs are NaN-filled before the kernel runs (FIBSPARSE_POISON_OUTPUTS=1),
    so an element it skips stays NaN; two calls agree bit for bit."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    q, k, v = random_qkv(2, 1000, 8, 2, head_dim, torch.bfloat16, "cuda", requires_grad=False)
    offsets = torch.tensor([128, 300, 555, 901], dtype=torch.int32, device="cuda")
    if fractional:
        offsets = offsets.float() + torch.tensor([0.5, 0.0, 0.125, 0.75], device="cuda")
    first, first_lse = forward_with("1", q, k, v, 128, offsets)
    second, second_lse = forward_with("1", q, k, v, 128, offsets)
    assert torch.isfinite(first).all() and torch.isfinite(first_lse).all()
    assert torch.equal(first, second) and torch.equal(first_lse, second_lse)


@requires_hopper
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("heads, heads_kv", [(2, 2), (4, 2), (8, 2)])  # one head per block; two; four
@pytest.mark.parametrize("tiles_per_block", ["1", "3"])
def test_hopper_forward_reads_the_row_before_a_fractional_strip(monkeypatch, head_dim, heads, heads_kv,
                                                                 tiles_per_block):
    """A fractional step's second row for a tile's first query lies one row
    before the strip, in the step's prefix (tma.cuh's row_with_prefix). With a
    window of one key and four positions that row carries a large weight, and
    each tile's first query is compared alone with the reference: a whole-tensor
    error would hide one wrong row in 64. Some prefixes start before key 0.
    Four heads a block hold two a warpgroup: 32-query tiles, two strips (and
    prefixes) a step."""
    monkeypatch.delenv("FIBSPARSE_HOPPER", raising=False)
    monkeypatch.setenv("FIBSPARSE_HOPPER_TILES", tiles_per_block)
    torch.manual_seed(head_dim + heads + int(tiles_per_block))
    q, k, v = random_qkv(2, 640, heads, heads_kv, head_dim, torch.bfloat16, "cuda", requires_grad=False)
    offsets = torch.tensor([1.5, 70.25, 129.75, 333.5], device="cuda")
    assert any("fwd_hopper_kernel" in n for n in forward_kernels(q, k, v, 1, offsets))
    out, lse = fibsparse_attn(q, k, v, 1, offsets, return_lse=True)
    ref, ref_lse = fibsparse_attn_ref(q.double(), k.double(), v.double(), 1, offsets.double(), return_lse=True)
    first = slice(0, None, 32)  # each tile's first query (tiles of 64 or 32)
    got, want = out[:, first].double(), ref[:, first]
    row_err = (got - want).abs().amax(-1) / want.abs().amax(-1)
    assert row_err.max() < 3e-2, row_err
    assert (lse[..., first].double() - ref_lse[..., first]).abs().max() < 2e-2


@requires_hopper
@pytest.mark.parametrize("head_dim", [64, 128])
def test_hopper_forward_takes_the_window_alone(monkeypatch, head_dim):
    """Calls without offsets (the window alone) run on the Hopper forward by
    default, and match the reference there."""
    monkeypatch.delenv("FIBSPARSE_HOPPER", raising=False)
    q, k, v = random_qkv(1, 333, 4, 2, head_dim, torch.bfloat16, "cuda", seqlen_k=400, requires_grad=False)
    none = torch.empty(0, dtype=torch.int32, device="cuda")
    assert any("fwd_hopper_kernel" in n for n in forward_kernels(q, k, v, 128, none))
    out, lse = fibsparse_attn(q, k, v, 128, none, return_lse=True)
    ref_out, ref_lse = fibsparse_attn_ref(q.double(), k.double(), v.double(), 128, none.long(), return_lse=True)
    assert rel_err(out, ref_out) < 1e-2 and rel_err(lse, ref_lse) < 1e-3


@requires_hopper
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("heads, seqlen_q, seqlen_k, num_offsets", [
    (8, 257, 257, 7), (16, 100, 333, 7), (8, 64, 64, 7),
    (8, 4096, 4096, 20),  # many steps per block: the stage rings of both blocks wrap several times
])
def test_hopper_forward_clusters_give_the_same_bits(monkeypatch, dtype, head_dim, heads, seqlen_q, seqlen_k,
                                                     num_offsets):
    """Where a kv group holds two pairs of heads sharing their offsets,
    FIBSPARSE_HOPPER_CLUSTER=1 runs their two blocks as a cluster that loads
    each stage once for both (multicast): the data is the same, so the results
    are bitwise those of separate blocks (the default), also with several
    tiles per block, and the kernel that ran says which it was."""
    monkeypatch.delenv("FIBSPARSE_HOPPER", raising=False)
    monkeypatch.setenv("FIBSPARSE_HOPPER_PACK", "0")  # else four heads share a block (one head a warpgroup here)
    torch.manual_seed(heads + seqlen_q + head_dim)
    q, k, v = random_qkv(2, seqlen_q, heads, 2, head_dim, dtype, "cuda", seqlen_k=seqlen_k, requires_grad=False)
    offsets = random_offsets(128, num_offsets, None, False, "cuda", spread=max(2, seqlen_k // (num_offsets + 1)))
    name = "c10::BFloat16" if dtype == torch.bfloat16 else "c10::Half"
    kernel = f"fwd_hopper_kernel<{name}, {head_dim}, 2, 1, "
    monkeypatch.delenv("FIBSPARSE_HOPPER_CLUSTER", raising=False)
    # (cluster, kFractional, kTwoDiagonals; the arguments after them follow)
    assert any(kernel + "1, false, false," in n for n in forward_kernels(q, k, v, 128, offsets))
    separate = fibsparse_attn(q, k, v, 128, offsets, return_lse=True)
    monkeypatch.setenv("FIBSPARSE_HOPPER_CLUSTER", "1")
    assert any(kernel + "2, false, false," in n for n in forward_kernels(q, k, v, 128, offsets))
    for tiles_per_block in ("1", "3"):
        monkeypatch.setenv("FIBSPARSE_HOPPER_TILES", tiles_per_block)
        clustered = fibsparse_attn(q, k, v, 128, offsets, return_lse=True)
        assert torch.equal(clustered[0], separate[0]) and torch.equal(clustered[1], separate[1]), tiles_per_block
    # Fractional positions run in separate blocks whatever the switch says.
    fractional = offsets.float() + 0.5
    assert any(kernel + "1, true, true," in n for n in forward_kernels(q, k, v, 128, fractional))


@requires_hopper
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("batch, heads, heads_kv, seqlen_q, seqlen_k, offsets", [
    (2, 4, 2, 257, 257, "shared"),     # two heads per block, 5 tiles: a last block with fewer
    (1, 3, 3, 300, 450, "per_head"),   # one head per block, queries shifted by 150
    (2, 8, 2, 4096, 4096, "shared"),   # 64 tiles, 20 offsets: rings wrap many times within a block
    (1, 2, 1, 64, 64, "shared"),       # one tile
    (2, 4, 4, 2100, 2100, "none"),     # the window alone, one head per block, 33 tiles: 32 and a last one
    (1, 8, 2, 4096, 4096, "none"),     # the window alone, two heads per block
    (2, 8, 2, 4096, 4096, "fractional"),  # fractional positions, two heads per block
    (1, 3, 3, 300, 450, "fractional_per_head"),
])
def test_hopper_forward_gives_the_same_bits_at_any_tiles_per_block(monkeypatch, dtype, head_dim, batch, heads,
                                                                   heads_kv, seqlen_q, seqlen_k, offsets):
    """A block walks several consecutive tiles (its q double-buffered, its stage
    ring running on across them); each tile's arithmetic is that of a block of
    its own, so any count (FIBSPARSE_HOPPER_TILES) gives the bits of one tile
    per block, and every output is written (outputs NaN-poisoned first)."""
    monkeypatch.delenv("FIBSPARSE_HOPPER", raising=False)
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    torch.manual_seed(seqlen_q + heads + head_dim)
    q, k, v = random_qkv(batch, seqlen_q, heads, heads_kv, head_dim, dtype, "cuda", seqlen_k=seqlen_k,
                         requires_grad=False)
    count = 0 if offsets == "none" else 20 if seqlen_k > 1000 else 6
    fractional = offsets.startswith("fractional")
    offs = random_offsets(128, count, heads if offsets.endswith("per_head") else None, fractional, "cuda",
                          dtype=torch.float32, spread=max(2, seqlen_k // (count + 1)))
    results = {}
    for tiles_per_block in ("1", "2", "3", "32", "64"):
        monkeypatch.setenv("FIBSPARSE_HOPPER_TILES", tiles_per_block)
        assert any("fwd_hopper_kernel" in n for n in forward_kernels(q, k, v, 128, offs))
        results[tiles_per_block] = fibsparse_attn(q, k, v, 128, offs, return_lse=True)
    one = results["1"]
    assert torch.isfinite(one[0]).all() and torch.isfinite(one[1]).all()
    ref_out = fibsparse_attn_ref(q.double(), k.double(), v.double(), 128, reference_offsets(offs))
    assert rel_err(one[0], ref_out) < 1e-2
    for tiles_per_block, (out, lse) in results.items():
        assert torch.equal(out, one[0]) and torch.equal(lse, one[1]), tiles_per_block


@requires_hopper
@pytest.mark.parametrize("pattern", ["offsets", "window alone"])
def test_hopper_forward_default_tiles_per_block_give_the_same_bits(monkeypatch, pattern):
    """At 16k tokens, GQA 32/8, the default walks several tiles per block (with
    offsets four 64-query spans on an H200, whose L2 holds a kv head's rows; with
    the window alone as many as leave at most 10% of the grid's slots idle:
    test_hopper_tiles_per_block_rule); its results are those of one tile per block."""
    monkeypatch.delenv("FIBSPARSE_HOPPER", raising=False)
    monkeypatch.delenv("FIBSPARSE_HOPPER_TILES", raising=False)
    q, k, v = random_qkv(1, 16384, 32, 8, 128, torch.bfloat16, "cuda", requires_grad=False)
    offsets = torch.tensor([128, 211, 341, 552, 893, 1445, 2338, 3783, 6121, 9904], dtype=torch.int32, device="cuda")
    if pattern == "window alone":
        offsets = offsets[:0]
    default = fibsparse_attn(q, k, v, 128, offsets, return_lse=True)
    monkeypatch.setenv("FIBSPARSE_HOPPER_TILES", "1")
    one = fibsparse_attn(q, k, v, 128, offsets, return_lse=True)
    assert torch.equal(default[0], one[0]) and torch.equal(default[1], one[1])


@requires_hopper
@pytest.mark.parametrize("name, setting, allowed", [
    ("FIBSPARSE_HOPPER", "off", "0, 1"), ("FIBSPARSE_HOPPER", "", "0, 1"), ("FIBSPARSE_HOPPER", "always", "0, 1"),
    ("FIBSPARSE_HOPPER_CLUSTER", "yes", "0, 1"), ("FIBSPARSE_HOPPER_CLUSTER", "2", "0, 1"),
    ("FIBSPARSE_HOPPER_PACK", "no", "0, 1"), ("FIBSPARSE_HOPPER_PACK", " 0", "0, 1"),
])
def test_hopper_switches_are_checked(monkeypatch, name, setting, allowed):
    """A comparison switch with a value it does not know is refused, naming the
    variable, what it got and what it takes (a GQA group of 4 sharing offsets:
    the call the cluster and packing switches steer)."""
    monkeypatch.delenv("FIBSPARSE_HOPPER", raising=False)
    monkeypatch.setenv(name, setting)
    q, k, v = random_qkv(1, 128, 8, 2, 64, torch.bfloat16, "cuda", requires_grad=False)
    with pytest.raises(RuntimeError, match=f"{name} must be one of {allowed} \\(or unset\\), got '{setting}'"):
        fibsparse_attn(q, k, v, 128, torch.tensor([130], dtype=torch.int32, device="cuda"))


@requires_hopper
@pytest.mark.parametrize("setting", ["0", "65", "two", "2x", ""])
def test_hopper_tiles_setting_is_checked(monkeypatch, setting):
    monkeypatch.delenv("FIBSPARSE_HOPPER", raising=False)
    monkeypatch.setenv("FIBSPARSE_HOPPER_TILES", setting)
    q, k, v = random_qkv(1, 128, 2, 2, 64, torch.bfloat16, "cuda", requires_grad=False)
    with pytest.raises(RuntimeError, match=f"FIBSPARSE_HOPPER_TILES must be a whole number from 1 to 64, got '{setting}'"):
        fibsparse_attn(q, k, v, 128, torch.tensor([130], dtype=torch.int32, device="cuda"))


@requires_hopper
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("batch, seqlen_q, seqlen_k, heads, offsets", [
    (2, 1000, 1000, 8, "odd"),          # 7 offsets: a tile's last step holds one strip; 1000 = 31 x 32 + 8
    (1, 77, 333, 16, "even"),           # queries shifted by 256, two groups of 8 in four blocks
    (1, 4096, 4096, 8, "many"),         # 20 offsets, several tiles a block: rings wrap
    (2, 300, 300, 8, "padded"),         # padded offsets, some out of reach
    (1, 640, 640, 8, "fractional"),     # two strips and two prefixes a step
    (1, 100, 230, 8, "fractional_mixed"),
])
def test_hopper_forward_two_heads_a_warpgroup(monkeypatch, dtype, head_dim, batch, seqlen_q, seqlen_k, heads, offsets):
    """Four heads of a kv group sharing their offsets take one block, two to a
    warpgroup (32-query tiles, two offsets' strips a step; each warp holds the
    same 8 queries of both heads, at fractional positions also scoring each
    strip's key rows one back, and tiles of 1000 and 77 queries end inside a
    warp's 8): the kernel that runs says so,
    FIBSPARSE_HOPPER_PACK=0 gives one head a warpgroup instead; both
    are within the float64 reference's bounds and within twice the other's
    error (the band's sums are the same, an offset's score sums its products
    in two chains), every output is written (NaN-poisoned first), and any
    tiles per block give the same bits."""
    monkeypatch.delenv("FIBSPARSE_HOPPER", raising=False)
    monkeypatch.delenv("FIBSPARSE_HOPPER_PACK", raising=False)
    monkeypatch.delenv("FIBSPARSE_HOPPER_TILES", raising=False)
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    torch.manual_seed(seqlen_q + heads + head_dim)
    q, k, v = random_qkv(batch, seqlen_q, heads, 2, head_dim, dtype, "cuda", seqlen_k=seqlen_k, requires_grad=False)
    window = 64
    if offsets == "fractional_mixed":
        offs = torch.tensor([window + 0.0, window + 7.5, 2 * window + 3.0, 150.5, 3 * window + 0.25], device="cuda")
    elif offsets == "padded":
        offs = torch.tensor([window, window + 9, 3 * window + 1, 1000, -1, -1], dtype=torch.int32, device="cuda")
    else:
        count = {"odd": 7, "even": 6, "many": 20, "fractional": 9}[offsets]
        offs = random_offsets(window, count, None, offsets == "fractional", "cuda", dtype=torch.float32,
                              spread=max(2, seqlen_k // (count + 1)))
    name = "c10::BFloat16" if dtype == torch.bfloat16 else "c10::Half"
    fractional = "true" if offs.is_floating_point() else "false"
    assert any(f"fwd_hopper_kernel<{name}, {head_dim}, 2, 2, 1, {fractional}, {fractional}," in n
               for n in forward_kernels(q, k, v, window, offs))
    packed = fibsparse_attn(q, k, v, window, offs, return_lse=True)
    monkeypatch.setenv("FIBSPARSE_HOPPER_PACK", "0")
    # (fractional: the rows one back scored from the tile's subdiagonal, test_two_diagonals.py)
    assert any(f"fwd_hopper_kernel<{name}, {head_dim}, 2, 1, 1, {fractional}, {fractional}," in n
               for n in forward_kernels(q, k, v, window, offs))
    unpacked = fibsparse_attn(q, k, v, window, offs, return_lse=True)
    monkeypatch.delenv("FIBSPARSE_HOPPER_PACK")
    ref = fibsparse_attn_ref(q.double(), k.double(), v.double(), window, reference_offsets(offs), return_lse=True)
    for name, got, other, want in (("out", packed[0], unpacked[0], ref[0]), ("lse", packed[1], unpacked[1], ref[1])):
        assert torch.isfinite(got).all(), name
        err, other_err = rel_err(got, want), rel_err(other, want)
        assert err < 1e-2 and err <= 2 * other_err + 1e-3, f"{name}: {err:.2e} (one head a warpgroup {other_err:.2e})"
    for tiles_per_block in ("1", "3", "64"):
        monkeypatch.setenv("FIBSPARSE_HOPPER_TILES", tiles_per_block)
        again = fibsparse_attn(q, k, v, window, offs, return_lse=True)
        assert torch.equal(again[0], packed[0]) and torch.equal(again[1], packed[1]), tiles_per_block


# Packed batches: (heads, heads_kv, head_dim) and the kernel's consumer warpgroups and heads a warpgroup
# (one head a block; two heads a block; four heads a block, two a warpgroup, at head_dim 128 and 64). Blocks of two
# warpgroups store their output through TMA and per-sequence maps, which must write no row past a sequence's end.
PACKED_SHAPES = [(2, 2, 64, "1, 1"), (4, 2, 64, "2, 1"), (8, 2, 128, "2, 2"), (8, 2, 64, "2, 2")]


@requires_hopper
@pytest.mark.parametrize("heads, heads_kv, head_dim, shape", PACKED_SHAPES)
@pytest.mark.parametrize("offsets", ["integer", "fractional", "none"])
def test_packed_batches_run_the_hopper_forward_per_sequence(monkeypatch, heads, heads_kv, head_dim, shape, offsets):
    """A packed batch runs the Hopper forward, after a launch that makes each
    sequence's tensor maps (sequence_maps.cuh): every sequence's rows, lse
    included, are bitwise those of a dense call of it alone, which runs the same
    kernel with the dense maps; at any tiles per block. The sequences: lengths off
    multiples of 64, fewer queries than keys, an empty one, one longer than the
    rest (its last blocks have no tile in the others)."""
    monkeypatch.delenv("FIBSPARSE_HOPPER", raising=False)
    monkeypatch.delenv("FIBSPARSE_HOPPER_PACK", raising=False)
    monkeypatch.delenv("FIBSPARSE_HOPPER_TILES", raising=False)
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    lengths_q, lengths_k = [70, 0, 1, 200, 64, 530], [100, 3, 1, 200, 64, 600]
    (cu_q, max_q), (cu_k, max_k) = packed(lengths_q, "cuda"), packed(lengths_k, "cuda")
    bounds_q, bounds_k = cu_q.tolist(), cu_k.tolist()
    torch.manual_seed(heads + head_dim)
    q = torch.randn(bounds_q[-1], heads, head_dim, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(bounds_k[-1], heads_kv, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    window = 48
    offs = {"integer": random_offsets(window, 7, None, False, "cuda", spread=60),
            "fractional": random_offsets(window, 7, None, True, "cuda", dtype=torch.float32, spread=60),
            "none": torch.zeros(0, dtype=torch.int32, device="cuda")}[offsets]
    if offsets == "none" and shape == "2, 2":
        shape = "2, 1"  # the window alone keeps one head a warpgroup

    def attend():
        return fibsparse_attn_varlen(q, k, v, cu_q, cu_k, max_q, max_k, window, offs, return_lse=True)

    (out, lse), names = cuda_kernels_of(attend)
    fractional = "true" if offs.is_floating_point() else "false"
    # P V in one product (two heads a warpgroup), or the rows one back scored from the tile (one)
    two_diagonals = fractional
    assert any(f"fwd_hopper_kernel<c10::BFloat16, {head_dim}, {shape}, 1, {fractional}, {two_diagonals}," in n
               for n in names), names
    assert any("sequence_maps_kernel" in n for n in names), names
    for b in range(len(lengths_q)):
        if not lengths_q[b]:
            continue
        rows_q, rows_k = slice(bounds_q[b], bounds_q[b + 1]), slice(bounds_k[b], bounds_k[b + 1])
        alone, alone_lse = fibsparse_attn(q[rows_q][None], k[rows_k][None], v[rows_k][None], window, offs,
                                          return_lse=True)
        assert torch.equal(out[rows_q], alone[0]) and torch.equal(lse[:, rows_q], alone_lse[0]), b
    for tiles_per_block in ("1", "3", "64"):
        monkeypatch.setenv("FIBSPARSE_HOPPER_TILES", tiles_per_block)
        again = attend()
        assert torch.equal(again[0], out) and torch.equal(again[1], lse), tiles_per_block
