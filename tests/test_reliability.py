"""Regression tests for non-finite values, refused calls, offsets changed
behind torch's back, threads, fake implementations, messages and the CLIs.
Each names the defect it guards against; the fuzzer (test_fuzz.py) covers
the same ground at random."""
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from fibsparse_ext import FibSparseAttention, fibsparse_attn, fibsparse_attn_ref, make_schedule
from fibsparse_ext.decode import KVCache, fibsparse_attn_with_kvcache
from fibsparse_ext.lm.generation import generate
from fibsparse_ext.lm.models import FibSparseLM, LMConfig
from utils import CUDA_ONLY, DEVICES, refused_by_device_assert, requires_cuda


def readers(seqlen, window, offsets, key):
    """Query rows whose pattern reads key row `key` (section 1 and 2 of the
    semantics): the band, and for a position p the rows floor(p) and, when
    p is not whole, floor(p) + 1 behind."""
    rows = set()
    for i in range(seqlen):
        if 0 <= i - key < window:
            rows.add(i)
        for p in offsets:
            a, f = int(np.floor(p)), p - np.floor(p)
            if i - p >= 0 and (i - a == key or (f != 0 and i - a - 1 == key)):
                rows.add(i)
    return rows


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("offsets", [[8, 13], [8.0, 13.0], [7.5, 12.25]])
@pytest.mark.parametrize("tensor, value", [("k", float("nan")), ("v", float("nan")), ("v", float("inf"))])
def test_non_finite_key_or_value_reaches_only_its_readers(device, offsets, tensor, value):
    """A NaN or inf in key/value row 10 made row 14 (which reads 14..11, 6, 1)
    NaN on the fractional path: the weight-0 neighbour of a whole position was
    multiplied in as 0 * NaN. (An inf key element can give a score of -inf,
    weight 0, so keys get NaN here.)"""
    dtype = torch.float64 if device == "cpu" else torch.float32
    q, k, v = (torch.randn(1, 40, 1, 16, dtype=dtype, device=device, requires_grad=True) for _ in range(3))
    with torch.no_grad():
        {"k": k, "v": v}[tensor][0, 10, 0, 0] = value
    fractional = isinstance(offsets[0], float)
    positions = torch.tensor(offsets, device=device, dtype=dtype if fractional else torch.int32)
    out = fibsparse_attn(q, k, v, 4, positions)
    expected = readers(40, 4, offsets, 10)
    bad_rows = set((~torch.isfinite(out[0, :, 0]).all(-1)).nonzero().flatten().tolist())
    assert bad_rows == expected
    dq, = torch.autograd.grad(out, q, torch.randn_like(out))
    bad_dq = set((~torch.isfinite(dq[0, :, 0]).all(-1)).nonzero().flatten().tolist())
    assert bad_dq == expected


def test_minus_inf_score_first_gives_weight_zero():
    """exp(-inf - -inf) made the whole row NaN when the first key scored -inf."""
    q = torch.ones(1, 3, 1, 2, dtype=torch.float64)
    k = torch.randn(1, 3, 1, 2, dtype=torch.float64)
    k[0, 2, 0, 0] = float("-inf")
    v = torch.arange(6.0, dtype=torch.float64).view(1, 3, 1, 2)
    out = fibsparse_attn(q, k, v, 3, [])
    torch.testing.assert_close(out, fibsparse_attn_ref(q, k, v, 3, []))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_query_with_every_score_minus_inf_gives_zero_and_minus_inf_lse(device, dtype):
    """Float32 overflow (q = 1e30, k = -1e30) or a -inf key: output 0, lse
    -inf, finite zero gradients for that query (FlashAttention's convention)."""
    q = torch.randn(1, 20, 2, 16, dtype=torch.float64)
    k = torch.randn(1, 20, 2, 16, dtype=torch.float64)
    v = torch.randn(1, 20, 2, 16, dtype=torch.float64)
    huge = 1e200 if dtype == torch.float64 else 1e30  # products overflow the accumulation type
    q[0, 5, 0] = huge
    k[0, :6, 0] = -huge  # every key query 5 reads (window 6, no offsets)
    q, k, v = (t.to(device, dtype).requires_grad_(True) for t in (q, k, v))
    out, lse = fibsparse_attn(q, k, v, 6, [], softmax_scale=1.0, return_lse=True)
    assert (out[0, 5, 0] == 0).all() and lse[0, 0, 5] == float("-inf")
    grads = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    assert (grads[0][0, 5, 0] == 0).all()
    # Elsewhere keys of 1e30 make large but finite gradients; on tensor cores
    # their 16-bit products may overflow, which says nothing about query 5.
    if not (device == "cuda" and dtype == torch.bfloat16):
        assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("device, dtype", [("cpu", torch.float32),
                                           pytest.param("cuda", torch.bfloat16, marks=CUDA_ONLY)])
@pytest.mark.parametrize("q0, k0", [(3e38, 2.0), (1e30, 1e9), (-3e38, 2.0)])
def test_a_dot_product_past_float32_is_an_infinite_score_in_kernel_and_reference(device, dtype, q0, k0):
    """The scale multiplies each dot product (as in FlashAttention), so a dot
    product past float32's range is an infinite score even where the scaled
    score (here 6e38 / 4) would fit: +inf makes the query NaN, -inf its only
    key's weight 0 (output 0, lse -inf). The reference computes in the same
    order and agrees: the CPU kernels, and on CUDA the tensor-core ones."""
    q, k, v = torch.zeros(1, 1, 1, 16), torch.zeros(1, 1, 1, 16), torch.ones(1, 1, 1, 16)
    q[0, 0, 0, 0], k[0, 0, 0, 0] = q0, k0
    q, k, v = (t.to(dtype) for t in (q, k, v))
    out, lse = fibsparse_attn(*(t.to(device) for t in (q, k, v)), 1, [], return_lse=True)
    expected_out, expected_lse = fibsparse_attn_ref(q, k, v, 1, [], return_lse=True)
    torch.testing.assert_close(out.cpu(), expected_out, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(lse.cpu(), expected_lse, equal_nan=True, rtol=0, atol=0)
    assert torch.isnan(out).all() if q0 * k0 > 0 else ((out == 0).all() and (lse == float("-inf")).all())


@pytest.mark.parametrize("device", DEVICES)
def test_float64_positions_with_float32_inputs_are_rounded_to_float32(device):
    """Positions are taken in the accumulation type: 3 + 1e-9 is 3 in float32,
    so query 3 reads key 0 through it (exact arithmetic would mask it there)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 6, 1, 16, device=device) for _ in range(3))
    near = torch.tensor([3 + 1e-9], dtype=torch.float64, device=device)
    whole = torch.tensor([3.0], dtype=torch.float32, device=device)
    assert torch.equal(fibsparse_attn(q, k, v, 1, near), fibsparse_attn(q, k, v, 1, whole))
    alone = fibsparse_attn(q, k, v, 1, [])  # query 3 without its offset key
    assert not torch.equal(fibsparse_attn(q, k, v, 1, near)[0, 3], alone[0, 3])


def _refused_decode_calls():
    """(description, kwargs) of calls that must be refused, every one before a write."""
    base = dict(window=4, offsets=[5], k=torch.ones(1, 1, 1, 8), v=torch.ones(1, 1, 1, 8))
    return [
        ("head_dim above the limit", dict(base, q=torch.randn(1, 1, 1, 1100), cache=(1, 8, 1, 1100),
                                          k=torch.ones(1, 1, 1, 1100), v=torch.ones(1, 1, 1, 1100))),
        ("too many offsets", dict(base, q=torch.randn(1, 1, 1, 8), offsets=list(range(5, 70005)))),
        ("offsets not increasing", dict(base, q=torch.randn(1, 1, 1, 8), offsets=[9, 6])),
        ("v of another dtype", dict(base, q=torch.randn(1, 1, 1, 8), v=torch.ones(1, 1, 1, 8, dtype=torch.float64))),
        ("cache_seqlens a list", dict(base, q=torch.randn(1, 1, 1, 8), cache_seqlens=[3])),
        ("cache overflow", dict(base, q=torch.randn(1, 1, 1, 8), cache_seqlens=torch.tensor([8]))),
        ("NaN scale", dict(base, q=torch.randn(1, 1, 1, 8), softmax_scale=float("nan"))),
    ]


@pytest.mark.parametrize("description, call", _refused_decode_calls(), ids=lambda x: x if isinstance(x, str) else "")
def test_refused_decode_call_changes_nothing(description, call):
    """head_dim 1100 was refused only after k, v had been written into the cache."""
    call = dict(call)
    kc = torch.randn(*call.pop("cache", (1, 8, 1, 8)))
    vc = torch.randn_like(kc)
    lengths = call.pop("cache_seqlens", torch.tensor([3]))
    before = [t.clone() for t in (kc, vc)] + ([lengths.clone()] if isinstance(lengths, torch.Tensor) else [])
    q = call.pop("q")
    with pytest.raises((ValueError, RuntimeError)):
        fibsparse_attn_with_kvcache(q, kc, vc, lengths, **call)
    after = [kc, vc] + ([lengths] if isinstance(lengths, torch.Tensor) else [])
    assert all(torch.equal(a, b) for a, b in zip(before, after)), description


def test_refused_module_and_generate_calls_change_no_cache():
    schedule = make_schedule("fixed", num_layers=1, window=4, max_distance=32)
    layer = FibSparseAttention(16, 2, schedule, 0)
    cache = layer.make_cache(1, 64)
    layer(torch.randn(1, 5, 16), cache=cache)
    before = [t.clone() for t in (cache.k, cache.v, cache.seqlens)]
    with pytest.raises(ValueError, match="x must be"):
        layer(torch.randn(1, 5, 15), cache=cache)
    with pytest.raises(ValueError, match="k and v must be"):
        cache.write(torch.randn(1, 1, 2, 8), torch.randn(1, 1, 2, 7))
    assert all(torch.equal(a, b) for a, b in zip(before, (cache.k, cache.v, cache.seqlens)))


def test_cpu_offsets_changed_behind_torchs_back_are_rechecked():
    """Writes through numpy (or .data) do not bump the version counter, so a
    cache keyed on it let non-increasing offsets through."""
    q = torch.randn(1, 64, 1, 8)
    backing = np.array([8, 13, 21])
    offsets = torch.from_numpy(backing)
    fibsparse_attn(q, q, q, 4, offsets)
    backing[:] = [13, 13, 2]
    with pytest.raises(ValueError, match="strictly increasing"):
        fibsparse_attn(q, q, q, 4, offsets)
    offsets.data[:] = torch.tensor([8, 13, 21])
    fibsparse_attn(q, q, q, 4, offsets)
    offsets.data[0] = 1
    with pytest.raises(ValueError, match=">= window"):
        fibsparse_attn(q, q, q, 4, offsets)
    positions_backing = np.array([8.0, 13.0])
    positions = torch.from_numpy(positions_backing)
    fibsparse_attn(q.double(), q.double(), q.double(), 4, positions)
    positions_backing[1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        fibsparse_attn(q.double(), q.double(), q.double(), 4, positions)


_DEVICE_OFFSETS_SCRIPT = """
import torch
from fibsparse_ext import fibsparse_attn
q = torch.randn(1, 100, 2, 64, device="cuda", dtype={dtype})
offsets = torch.tensor({good}, device="cuda", dtype={offsets_dtype})
fibsparse_attn(q, q, q, 4, offsets)  # valid: checked on the host once, then cached
torch.cuda.synchronize()
offsets.data.copy_(torch.tensor({bad}, dtype={offsets_dtype}))  # leaves the version counter as it was
try:
    {call}
    torch.cuda.synchronize()
except RuntimeError as e:
    print("REFUSED", str(e).splitlines()[0])
else:
    print("ACCEPTED")
"""


@requires_cuda
@pytest.mark.parametrize("dtype", ["torch.bfloat16", "torch.float32"])  # tensor-core and lane-group kernels
@pytest.mark.parametrize("offsets_dtype, good, bad, call", [
    ("torch.int32", [8, 13, 21], [13, 13, 2], "fibsparse_attn(q, q, q, 4, offsets)"),
    ("torch.int32", [8, 13, 21], [2, 13, 21], "fibsparse_attn(q, q, q, 4, offsets)"),
    ("torch.float32", [8.5, 13.5], "[8.5, float('nan')]", "fibsparse_attn(q, q, q, 4, offsets)"),
    ("torch.int32", [8, 13, 21], [50, 90, 40], "torch.ops.fibsparse.fwd(q, q, q, offsets, [4], 0.125)"),
    ("torch.int32", [8, 13, 21], [50, 90, 40],  # GQA with shared offsets: blocks of two heads
     "torch.ops.fibsparse.fwd(q, q[:, :, :1].contiguous(), q[:, :, :1].contiguous(), offsets, [4], 0.125)"),
    ("torch.int32", [8, 13, 21], [21, 13, 8],  # the backward's own check (in its dq pass)
     "torch.ops.fibsparse.bwd(q, q, q, q, q, torch.zeros(1, 2, 100, device='cuda'), None, offsets, [4], 0.125)"),
    ("torch.int32", [8, 13, 21], [21, 13, 8],  # the same, GQA with shared offsets: dq blocks of two heads
     "torch.ops.fibsparse.bwd(q, q, q[:, :, :1].contiguous(), q[:, :, :1].contiguous(), q, "
     "torch.zeros(1, 2, 100, device='cuda'), None, offsets, [4], 0.125)"),
    ("torch.int32", [8, 13, 21], [8, -5, 21],  # decode (its Python entry checks on the host every call)
     "torch.ops.fibsparse.decode(q[:, -1:], q, q, torch.tensor([100], device='cuda'), offsets, [4], 0.125, False)"),
])
def test_device_offsets_changed_behind_torchs_back_stop_the_kernel(dtype, offsets_dtype, good, bad, call):
    """Device offsets are checked on the host once per version; a write that
    bypasses the version counter (here `.data`), or a direct call of the op, is
    caught by the kernels' own check on the device and raised at the next
    synchronization. A device-side assert ends the process's CUDA context, so
    each case runs in a process of its own; the assert's message names the
    check (utils.DEVICE_ASSERT_ERRORS: the runtime's own error varies)."""
    script = _DEVICE_OFFSETS_SCRIPT.format(dtype=dtype, offsets_dtype=offsets_dtype, good=good, bad=bad, call=call)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert refused_by_device_assert(result.stdout), result.stdout + result.stderr[-2000:]
    assert "fibsparse: offsets must be strictly increasing" in result.stderr


@requires_cuda
def test_cuda_device_offsets_check_passes_valid_offsets_of_every_kind():
    """The check blocks must not refuse what the host check accepts: padding
    -1 at the end of per-head rows, fractional positions, no offsets at all."""
    q = torch.randn(2, 100, 4, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    for offsets in (torch.tensor([[8, 13, -1], [5, 21, 34], [-1, -1, -1], [4, 9, 99]], device="cuda", dtype=torch.int32),
                    torch.tensor([4.0, 8.5, 99.0], device="cuda"), torch.zeros(0, device="cuda", dtype=torch.int32)):
        out = torch.ops.fibsparse.fwd(q, q, q, offsets, [4], 0.125)[0]
        out.float().sum().backward()
        torch.cuda.synchronize()


def test_threads_share_the_offsets_check():
    """Four threads calling at once: 'dictionary changed size during iteration'."""
    q = torch.randn(1, 16, 1, 8)
    errors = []
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)

    def work():
        try:
            for _ in range(300):
                fibsparse_attn(q, q, q, 2, torch.tensor([2, 3]))  # a new tensor each call
        except Exception as e:  # noqa: BLE001 (any failure is the finding)
            errors.append(e)

    try:
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        sys.setswitchinterval(interval)
    assert not errors and not any(t.is_alive() for t in threads)


def test_module_refuses_odd_head_dim_with_rotary():
    schedule = make_schedule("fixed", num_layers=1, window=4, max_distance=32)
    with pytest.raises(ValueError, match="head_dim .* must be even"):
        FibSparseAttention(12, 4, schedule, 0)
    layer = FibSparseAttention(12, 4, schedule, 0, rotary=False)  # head_dim 3 without rotary works
    assert layer(torch.randn(1, 10, 12)).shape == (1, 10, 12)


@pytest.mark.parametrize("case, match", [
    ("cpu k", "k must be on q's device"),
    ("head_dim", "q's batch .* and head_dim"),
    ("dtype", "k must have q's dtype"),
    ("seqlen", "must not exceed"),
    ("3-D q", "q must be a 4-D tensor"),
    ("offsets device", "offsets must be on q's device"),
])
def test_fake_implementation_checks_like_the_real_op(case, match):
    """Meta inputs used to return shapes for any arguments."""
    meta = dict(device="meta")
    q, k, v = torch.empty(1, 8, 2, 16, **meta), torch.empty(1, 8, 2, 16, **meta), torch.empty(1, 8, 2, 16, **meta)
    offsets = torch.empty(3, dtype=torch.int32, **meta)
    if case == "cpu k":
        k = torch.empty(1, 8, 2, 16)
    elif case == "head_dim":
        k = v = torch.empty(1, 8, 2, 8, **meta)
    elif case == "dtype":
        k = torch.empty(1, 8, 2, 16, dtype=torch.float64, **meta)
    elif case == "seqlen":
        k = v = torch.empty(1, 4, 2, 16, **meta)
    elif case == "3-D q":
        q = torch.empty(8, 2, 16, **meta)
    elif case == "offsets device":
        offsets = torch.tensor([5, 8, 13], dtype=torch.int32)
    with pytest.raises((ValueError, RuntimeError), match=match):
        torch.ops.fibsparse.fwd(q, k, v, offsets, [4], 0.25)
    out, lse = torch.ops.fibsparse.fwd(torch.empty(1, 8, 2, 16, **meta), torch.empty(1, 8, 2, 16, **meta),
                                       torch.empty(1, 8, 2, 16, **meta), torch.empty(3, dtype=torch.int32, **meta), [4],
                                       0.25)
    assert out.shape == (1, 8, 2, 16) and lse.shape == (1, 2, 8)


def test_fake_checks_at_trace_time_under_compile():
    def attention(q, k, v):
        return fibsparse_attn(q, k, v, 4, torch.tensor([5, 9], dtype=torch.int32))

    q = torch.randn(1, 8, 2, 16)
    compiled = torch.compile(attention, backend="aot_eager", fullgraph=True)
    with pytest.raises(Exception, match="head_dim"):
        compiled(q, torch.randn(1, 8, 2, 8), torch.randn(1, 8, 2, 8))


@pytest.mark.parametrize("call, match", [
    (lambda q: fibsparse_attn(q, q, q, 2**70, []), r"window must be an int in \[1, 2\^62 - 1\].*got 1180591620717411303424"),
    (lambda q: fibsparse_attn(q, q, q, 4, [8, 2**70]), r"offsets must be distances <= 2\^31 - 1"),
    (lambda q: fibsparse_attn(q, q, q, 4, [8, 2**40]), r"offsets must be distances <= 2\^31 - 1"),
    (lambda q: fibsparse_attn(q, q, q, 4, torch.tensor([8, 13], device="meta")), "offsets must be on q's device"),
    (lambda q: fibsparse_attn(q, q, q, 4, None), r"offsets must be a sequence .* got NoneType None"),
    (lambda q: KVCache(0, 8, 1, 8, ring=True), "batch must be an int >= 1, got 0"),
    (lambda q: fibsparse_attn_with_kvcache(q[:, :1], q, q, [3, 5], 4, []), "cache_seqlens must be an integer tensor"),
    (lambda q: fibsparse_attn_with_kvcache(q[:, :1], q, q, torch.tensor([3], device="meta"), 4, []),
     "cache_seqlens must hold values, on the CPU or q's device cpu, got a meta tensor"),
    (lambda q: fibsparse_attn(q, q, q, 4, [], softmax_scale="a"), "softmax_scale must be a finite number, got 'a'"),
    (lambda q: fibsparse_attn(q, q, q, 4, [], softmax_scale="0.5"), "softmax_scale must be a finite number, got '0.5'"),
    (lambda q: FibSparseAttention(16, 2, make_schedule("fixed", num_layers=1, window=4, max_distance=32), 0)(
        torch.randn(5, 16)), r"x must be \(batch, seqlen, embed_dim=16\), got \(5, 16\)"),
    (lambda q: make_schedule("custom", num_layers=1, window=4, max_distance=64, offsets=[[8, 2**40]]),
     r"offsets must be a list .* integers in \[window \(4\), 2\^31 - 1\]"),
])
def test_messages_name_the_argument(call, match):
    with pytest.raises((ValueError, RuntimeError), match=match):
        call(torch.randn(1, 16, 1, 8))


@pytest.mark.parametrize("prompt, kwargs, match", [
    (torch.zeros(0, 4, dtype=torch.long), {}, r"batch >= 1"),
    (torch.zeros(1, 4, dtype=torch.long), dict(temperature=float("nan")), "temperature must be a finite number"),
    (torch.zeros(1, 4), {}, "integer token ids"),
])
def test_generate_refuses_bad_arguments(prompt, kwargs, match):
    model = FibSparseLM(LMConfig.preset("tiny"))
    with pytest.raises(ValueError, match=match):
        generate(model, prompt, 3, **kwargs)


@pytest.mark.parametrize("args", [["--layers", "0"], ["--window", "0"], ["--max-distance", "-3"],
                                  ["--window", "600", "--max-distance", "100"]])
def test_self_check_cli_refuses_bad_arguments_before_running(args):
    result = subprocess.run([sys.executable, "-m", "fibsparse_ext", *args], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert "error:" in result.stderr and "Traceback" not in result.stderr
    assert "self-check" not in result.stdout


@pytest.mark.parametrize("args", [["--schedules", ""], ["--steps", "0"], ["--batch-size", "0"],
                                  ["--schedules", "fancy"], ["--device", "nonsense"]])
def test_experiment_cli_refuses_bad_arguments_before_creating_anything(tmp_path, args):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "fibsparse_ext.lm.experiments.extrapolate", *args, "--out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "error:" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()

