"""The Hopper dk/dv pass (warpgroup products fed by TMA, csrc/cuda/dkdv_hopper_kernel.cuh):
that it is the pass a compute capability 9.0 GPU runs for the window alone at
head_dim 64 on dense batches, and only there; that its dk and dv match the float64
reference and the mma.sync pass (FIBSPARSE_HOPPER=0) where its geometry differs
(lengths that are not multiples of 64, fewer queries than keys, windows of one key
up to past the sequence, GQA groups walked head by head); that it writes every
element and is deterministic; and, without a GPU, that ptxas compiles it without
serializing its wgmma or spilling."""
import importlib.util
import os
import re
import shutil
import subprocess

import pytest
import torch

from fibsparse_ext import build_info, fibsparse_attn, fibsparse_attn_ref
from utils import HOPPER, random_qkv, rel_err, requires_cuda

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)


def requires_hopper(test):
    """Decorator: `test` runs on a compute capability 9.0 GPU with an sm_90a build (marked `cuda`)."""
    return pytest.mark.skipif(not HOPPER, reason="needs a compute capability 9.0 GPU and an sm_90a build")(
        requires_cuda(test))


@pytest.mark.skipif(NVCC is None or torch.version.cuda is None or not build_info()["cuda"],
                    reason="needs nvcc and a CUDA build of torch and of this extension")
@pytest.mark.parametrize("source", ["bwd_bf16.cu", "bwd_fp16.cu"])
def test_ptxas_keeps_the_hopper_dkdv_wgmma_asynchronous(tmp_path, source):
    """As for the Hopper forward (test_hopper.py): ptxas reports a kernel whose
    wgmma it serializes only as "Potential Performance Loss"; the pass must
    carry no such report, and no spill."""
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
    kernels = re.findall(r"Compiling entry function '(\w*dkdv_hopper_kernel\w*)'", report)
    assert len(kernels) == 1, report[-3000:]  # head_dim 64
    assert "Performance Loss" not in report, [line for line in report.splitlines() if "Performance Loss" in line]
    spills = re.search(rf"Function properties for {kernels[0]}\s+\d+ bytes stack frame, (\d+) bytes spill stores",
                       report)
    assert spills is not None and spills.group(1) == "0", spills and spills.group(0)


def backward_kernels(q, k, v, window, offsets):
    """The CUDA kernels one backward launches (their names, from the profiler)."""
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    out = fibsparse_attn(q, k, v, window, offsets)
    grad = torch.randn_like(out)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        torch.autograd.grad(out, (q, k, v), grad)
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def gradients_with(monkeypatch, setting, q, k, v, window, grad):
    """dq, dk, dv of the window alone with FIBSPARSE_HOPPER set to `setting`
    ("1": the Hopper passes where they apply, "0": mma.sync)."""
    monkeypatch.setenv("FIBSPARSE_HOPPER", setting)
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    out = fibsparse_attn(q, k, v, window, [])
    return torch.autograd.grad(out, (q, k, v), grad)


@requires_hopper
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_hopper_dkdv_pass_runs_for_the_window_alone_at_head_dim_64(monkeypatch, dtype):
    monkeypatch.delenv("FIBSPARSE_HOPPER", raising=False)
    q, k, v = random_qkv(1, 256, 4, 2, 64, dtype, "cuda", requires_grad=False)
    none = torch.zeros(0, dtype=torch.int32, device="cuda")
    names = backward_kernels(q, k, v, 128, none)
    assert any("dkdv_hopper_kernel" in n for n in names) and not any("dkdv_mma_kernel" in n for n in names), names
    offsets = torch.tensor([130, 211], device="cuda", dtype=torch.int32)  # offsets: the mma.sync pass
    names = backward_kernels(q, k, v, 128, offsets)
    assert not any("dkdv_hopper_kernel" in n for n in names) and any("dkdv_mma_kernel" in n for n in names), names
    q128, k128, v128 = random_qkv(1, 256, 4, 2, 128, dtype, "cuda", requires_grad=False)  # head_dim 128
    assert not any("dkdv_hopper_kernel" in n for n in backward_kernels(q128, k128, v128, 128, none))
    monkeypatch.setenv("FIBSPARSE_HOPPER", "0")
    assert not any("dkdv_hopper_kernel" in n for n in backward_kernels(q, k, v, 128, none))


CASES = [
    # (batch, seqlen_q, seqlen_k, heads, heads_kv, window)
    (1, 300, 300, 2, 2, 128),     # MHA, a partial last block
    (2, 257, 257, 8, 2, 128),     # GQA 4: each block walks four heads, batch 2
    (1, 100, 130, 4, 2, 128),     # fewer queries than keys: positions shifted by 30
    (1, 70, 300, 6, 2, 20),       # a shift of 230: the first blocks' keys have no reader in the band
    (1, 130, 130, 4, 4, 1),       # a window of one key
    (1, 200, 200, 2, 1, 200),     # the window is the whole sequence (dense causal)
    (1, 190, 190, 4, 2, 300),     # a window past the sequence
    (1, 1000, 1000, 2, 2, 50),    # steps of a window not a multiple of 16
    (3, 64, 64, 2, 2, 16),        # one block per sequence
    (1, 1, 5, 2, 2, 3),           # one query
]


@requires_hopper
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES, ids=[f"b{c[0]}-q{c[1]}-k{c[2]}-h{c[3]}kv{c[4]}-w{c[5]}" for c in CASES])
def test_hopper_dkdv_matches_reference_and_mma_pass(monkeypatch, dtype, case):
    batch, seqlen_q, seqlen_k, heads, heads_kv, window = case
    torch.manual_seed(seqlen_q * 31 + window)
    q, k, v = random_qkv(batch, seqlen_q, heads, heads_kv, 64, dtype, "cuda", seqlen_k=seqlen_k, requires_grad=False)
    grad = torch.randn(q.shape, device="cuda", dtype=dtype)
    names = backward_kernels(q, k, v, window, [])
    assert any("dkdv_hopper_kernel" in n for n in names), names
    hopper = gradients_with(monkeypatch, "1", q, k, v, window, grad)
    mma = gradients_with(monkeypatch, "0", q, k, v, window, grad)
    inputs = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    ref = torch.autograd.grad(fibsparse_attn_ref(*inputs, window, []), inputs, grad.double())
    assert torch.equal(hopper[0], mma[0])  # dq: the same mma.sync pass, from the same forward
    for name, got, other, want in zip(("dk", "dv"), hopper[1:], mma[1:], ref[1:]):
        # The two passes add a key's readers in different orders: each within
        # the dtype's bound of the reference, and within 2x of the other's error.
        err, mma_err = rel_err(got, want), rel_err(other, want)
        assert err < 1e-2 and err <= 2 * mma_err + 1e-3, f"{name}: {err:.2e} (mma.sync {mma_err:.2e})"


@requires_hopper
def test_hopper_dkdv_is_deterministic_and_writes_every_output(monkeypatch):
    """Outputs are NaN-filled before the kernels run (FIBSPARSE_POISON_OUTPUTS=1),
    so an element the pass skips stays NaN; two calls agree bit for bit."""
    monkeypatch.setenv("FIBSPARSE_POISON_OUTPUTS", "1")
    q, k, v = random_qkv(2, 1000, 8, 2, 64, torch.bfloat16, "cuda", seqlen_k=1077, requires_grad=False)
    grad = torch.randn(q.shape, device="cuda", dtype=q.dtype)
    first = gradients_with(monkeypatch, "1", q, k, v, 128, grad)
    second = gradients_with(monkeypatch, "1", q, k, v, 128, grad)
    for name, a, b in zip(("dq", "dk", "dv"), first, second):
        assert torch.isfinite(a).all(), name
        assert torch.equal(a, b), name
