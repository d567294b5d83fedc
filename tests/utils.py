"""Helpers shared by the tests: random inputs, the error measure and its
tolerances, the devices to run on, and one forward-and-backward pass with
random upstream gradients. fuzz.py holds the fuzzer's own generator and checker.

Where a test goes, one rule, so that a CUDA case is found beside its subject:

* One file per subject (test_<subject>.py). A check that means the same on both
  devices is parametrized over DEVICES, so its CPU and CUDA cases sit together.
* A case of a subject that only CUDA has (the fp16/bf16 tensor-core kernels, the
  device-side offsets check, an input only a GPU runs in reasonable time, a
  second GPU) stays in that subject's file, marked @requires_cuda (which adds
  the `cuda` marker).
* test_cuda.py has one subject, the kernels as CUDA launches: they run on the
  caller's stream, launch nothing for empty input, write every element of their
  launch grid (output poisoning), give the same bits on every run and index past
  2^31 elements. Nothing else goes there.

The tests import this module as `utils`: tests/ has no __init__.py, so pytest's
default import mode puts tests/ itself on sys.path (as it does for fuzz.py).
"""
import pytest
import torch

from fibsparse_ext import build_info, fibsparse_attn, fibsparse_attn_ref
from fibsparse_ext.schedules import layer_offsets
from fibsparse_ext.accuracy import TOLERANCE  # noqa: F401  (re-exported: the tests' tolerances)
from fibsparse_ext.accuracy import relative_error as rel_err  # noqa: F401

# Every CUDA-only case carries the `cuda` marker (pyproject.toml), so that
# `pytest -m cuda` (or -k cuda) selects all of them, wherever their subject's file is.
CUDA_ONLY = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA_ONLY)]
# Whether the Hopper forward can run here: a compute capability 9.0 GPU and a build with sm_90a.
HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0) and build_info()["hopper_forward"]

# The fractional tests' pattern: a short window and few positions, so that a
# term read from a wrong row, or lost, moves its key's or query's gradient far
# past rounding. One whole position (f == 0), which takes the diagonal
# product alone; fractions near both ends (0.875 weighs on the dk/dv pass's
# second diagonal, 0.125 on the first rows' share of the dq pass's row 15).
FRACTIONAL_WINDOW = 16
FRACTIONAL_POSITIONS = {"f=0.875": [16.875, 29.875, 50.0, 70.875, 200.875],
                        "f=0.125": [16.125, 29.125, 50.0, 70.125, 200.125]}


def requires_cuda(test):
    """Decorator: `test` runs only with a GPU and is marked `cuda` (a module uses
    `pytestmark = CUDA_ONLY` instead)."""
    for mark in CUDA_ONLY:
        test = mark(test)
    return test


def random_qkv(batch, seqlen_q, heads, heads_kv, head_dim, dtype, device, seqlen_k=None, requires_grad=True):
    """Fresh random q, k, v (never zeros), in float64 on the CPU first so that
    every dtype and device sees the same numbers."""
    seqlen_k = seqlen_q if seqlen_k is None else seqlen_k
    shapes = [(batch, seqlen_q, heads, head_dim), (batch, seqlen_k, heads_kv, head_dim),
              (batch, seqlen_k, heads_kv, head_dim)]
    return [torch.randn(s, dtype=torch.float64).to(device=device, dtype=dtype).requires_grad_(requires_grad)
            for s in shapes]


def random_rows(shape, dtype, seed):
    """Fresh random rows on the GPU from a seeded generator of their own,
    drawn in float32 and cast, so each dtype sees the same numbers."""
    generator = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(shape, generator=generator, device="cuda", dtype=torch.float32).to(dtype)


def cuda_kernels_of(function):
    """function()'s result and the names of the CUDA kernels it launched (the profiler's)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        result = function()
        torch.cuda.synchronize()
    return result, [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def template_arguments(kernels, kernel):
    """The template arguments of the one launch of `kernel` (a kernel's name, e.g.
    "dkdv_mma_kernel") among kernel names (cuda_kernels_of's), as strings:
    ["c10::BFloat16", "int", "128", ..]."""
    names = [name for name in kernels if kernel in name]
    assert len(names) == 1, kernels
    return names[0][names[0].index("<") + 1:names[0].rindex(">(")].split(", ")


def assert_refused_before_any_kernel(monkeypatch, switch, setting, call):
    """call() launches fibsparse kernels with the environment switch unset (the
    control: an empty list below then means that none ran, not that the
    profiler recorded none); with `setting`, which the switch takes as neither
    0 nor 1, it raises an error naming the variable, what it got and what it
    takes, before any fibsparse kernel runs."""
    monkeypatch.delenv(switch, raising=False)
    _, kernels = cuda_kernels_of(call)
    assert any("fibsparse" in name for name in kernels), kernels
    monkeypatch.setenv(switch, setting)

    def refused():
        with pytest.raises(RuntimeError, match=f"{switch} must be one of 0, 1 \\(or unset\\), got '{setting}'"):
            call()

    _, kernels = cuda_kernels_of(refused)
    ran = [name for name in kernels if "fibsparse" in name]
    assert not ran, ran


def gqa_forward_call(offsets, head_dim, window=128, seqlen=300):
    """A call of the forward op on fresh bf16 rows of one GQA group of 4 (8
    query heads over 2), which the Hopper forward takes with two heads a
    warpgroup: what a test of its switches hands assert_refused_before_any_kernel."""
    q = random_rows((1, seqlen, 8, head_dim), torch.bfloat16, 0)
    k, v = (random_rows((1, seqlen, 2, head_dim), torch.bfloat16, i) for i in (1, 2))
    return lambda: torch.ops.fibsparse.fwd(q, k, v, offsets, [window], 0.125)


def backward_call(offsets, head_dim, window=128, seqlen=300):
    """A call of the backward op on fresh bf16 rows (one sequence of `seqlen`,
    two heads), its forward run first: what a switch test hands
    assert_refused_before_any_kernel."""
    q, k, v = (random_rows((1, seqlen, 2, head_dim), torch.bfloat16, i) for i in range(3))
    out, lse = torch.ops.fibsparse.fwd(q, k, v, offsets, [window], 0.125)
    dout, dlse = random_rows(out.shape, torch.bfloat16, 3), random_rows(lse.shape, torch.float32, 4)
    return lambda: torch.ops.fibsparse.bwd(dout, q, k, v, out, lse, dlse, offsets, [window], 0.125)


def fibonacci_offsets(window, seqlen, fractional=False):
    """One layer's Fibonacci offsets (alpha 1) on the GPU: int32, or fractional positions
    0.375 past them as float32."""
    values = torch.tensor(layer_offsets("fibonacci", 1.0, window, seqlen), dtype=torch.float64, device="cuda")
    return (values + 0.375).float() if fractional else values.int()


def packed(lengths, device="cpu"):
    """cu_seqlens (int32) and the longest length, for a list of sequence lengths."""
    cu = torch.tensor([0] + torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist(), dtype=torch.int32)
    return cu.to(device), max(lengths, default=0)


def random_offsets(window, num_offsets, heads=None, fractional=False, device="cpu", dtype=torch.float64,
                   spread=40, generator=None):
    """Strictly increasing offsets >= window (integer) or positions (fractional),
    shared (K,) or per head (heads, K)."""
    rows = []
    for _ in range(heads or 1):
        gaps = torch.rand(num_offsets, generator=generator, dtype=torch.float64) * spread + 1.0
        row = window + torch.cumsum(gaps, 0) - 1.0
        rows.append(row if fractional else row.floor().to(torch.int64))
    out = torch.stack(rows) if heads else rows[0]
    return out.to(device=device, dtype=dtype if fractional else torch.int32)


def replay_decode_steps_without_sync(model, caches, prompt, replays, **step_options):
    """Runs `prompt` into `caches`, then a DecodeStep's eager warm-up and its
    capture, asserts the step is graphed, and replays it `replays` times with
    every device sync an error. Afterwards each sequence holds
    prompt_len + DecodeStep.WARMUP_STEPS + 1 + replays tokens."""
    from fibsparse_ext.lm.generation import DecodeStep
    with torch.no_grad():
        token = model(prompt, caches)[:, -1].argmax(-1)
        step = DecodeStep(model, caches, cuda_graph=True, **step_options)
        for _ in range(DecodeStep.WARMUP_STEPS + 1):  # eager warm-up, then the capture
            token = step(token).argmax(-1)
        assert step.graph is not None
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(replays):
                token = step(token).argmax(-1)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def position_dtype(dtype):
    """The dtype of fractional positions for q of `dtype`: float64 with float64,
    float32 otherwise (the kernels keep positions in their accumulation type)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def attention_and_grads(q, k, v, window, offsets, seed=0):
    """out, lse and the gradients of q, k, v (and of fractional positions) for
    random upstream gradients of out and lse drawn on q's device from `seed`."""
    offsets = offsets.detach().requires_grad_(offsets.is_floating_point())
    out, lse = fibsparse_attn(q, k, v, window, offsets, return_lse=True)
    generator = torch.Generator(device=q.device).manual_seed(seed)
    grad_out = torch.randn(out.shape, generator=generator, device=q.device, dtype=out.dtype)
    grad_lse = torch.randn(lse.shape, generator=generator, device=q.device, dtype=lse.dtype)
    inputs = [q, k, v] + ([offsets] if offsets.requires_grad else [])
    grads = torch.autograd.grad([out, lse], inputs, [grad_out, grad_lse])
    return [out, lse, *grads]


def reference_grads(q, k, v, window, offsets, dout, dlse, scale):
    """dq, dk, dv and d offsets of the float64 reference for upstream
    gradients dout and dlse (a dense batch)."""
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    pos = offsets.double().requires_grad_()
    out, lse = fibsparse_attn_ref(q64, k64, v64, window, pos, softmax_scale=scale, return_lse=True)
    return torch.autograd.grad([out, lse], [q64, k64, v64, pos], [dout.double(), dlse.double()])


def packed_reference_grads(q, k, v, cu_seqlens, window, offsets, dout, dlse, scale):
    """reference_grads of a packed batch whose queries and keys share
    cu_seqlens: each sequence alone, its dq, dk, dv in the packed rows, d
    offsets summed over the sequences."""
    grads = [[], [], [], torch.zeros(offsets.shape, dtype=torch.float64, device=q.device)]
    for start, end in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        if end == start:
            continue
        rows = slice(start, end)
        alone = reference_grads(q[None, rows], k[None, rows], v[None, rows], window, offsets, dout[None, rows],
                                dlse[:, rows][None], scale)
        for i in range(3):
            grads[i].append(alone[i][0])
        grads[3] += alone[3]
    grads[:3] = [torch.cat(parts) for parts in grads[:3]]
    return grads


def dense_backward_case(batch, seqlen, heads, heads_kv, head_dim, dtype, offsets, window):
    """A dense batch's backward on fresh rows (seeded by seqlen), its forward
    run first: the backward op's arguments (a gradient of lse included) and
    the float64 reference's dq, dk, dv and d offsets."""
    scale = head_dim ** -0.5
    q = random_rows((batch, seqlen, heads, head_dim), dtype, seqlen)
    k, v = (random_rows((batch, seqlen, heads_kv, head_dim), dtype, seqlen + i) for i in (1, 2))
    out, lse = torch.ops.fibsparse.fwd(q, k, v, offsets, [window], scale)
    dout, dlse = random_rows(out.shape, dtype, 7), random_rows(lse.shape, torch.float32, 8)
    return ((dout, q, k, v, out, lse, dlse, offsets, [window], scale),
            reference_grads(q, k, v, window, offsets, dout, dlse, scale))


# A packed batch whose sequences end on every kind of key tile: empty, one key,
# one short of a tile, whole, one past, ragged; the longest reaches several key
# tiles back, past the farthest Fibonacci offset of a short window.
PACKED_LENGTHS = [700, 1, 0, 64, 65, 129, 63, 128, 300]


def packed_backward_case(lengths, heads, heads_kv, head_dim, dtype, offsets, window):
    """dense_backward_case for a packed batch of sequences of `lengths`, whose
    queries and keys share cu_seqlens: the varlen backward op's arguments and
    the reference's gradients."""
    cu, longest = packed(lengths, "cuda")
    scale = head_dim ** -0.5
    q = random_rows((sum(lengths), heads, head_dim), dtype, 20)
    k, v = (random_rows((sum(lengths), heads_kv, head_dim), dtype, 21 + i) for i in range(2))
    out, lse = torch.ops.fibsparse.varlen_fwd(q, k, v, cu, cu, longest, longest, offsets, [window], scale)
    dout, dlse = random_rows(out.shape, dtype, 30), random_rows(lse.shape, torch.float32, 31)
    return ((dout, q, k, v, out, lse, dlse, cu, cu, longest, longest, offsets, [window], scale),
            packed_reference_grads(q, k, v, cu, window, offsets, dout, dlse, scale))


def dq_heads_per_block(heads, heads_kv, head_dim):
    """How many query heads of a kv group the backward's dq pass serves in one
    block: the largest power of two that divides the group, up to 4 at
    head_dim 64 and 2 at 128."""
    group, limit = heads // heads_kv, 4 if head_dim == 64 else 2
    return next(n for n in (4, 2, 1) if n <= limit and group % n == 0)


def per_head_padded_positions():
    """Fractional positions for 4 query heads over 2 kv heads, one row a head:
    20 in the first (more than a round of 16, the farthest beyond the reach
    of the first blocks, a whole position among them), 17 and 2 before
    padding in the next two, and a row of padding alone."""
    first = [16.5 + 97.25 * k for k in range(20)]
    first[5] = 503.0  # a whole position
    rows = [first,
            [x + 0.125 for x in first[:17]] + [-1.0] * 3,
            [40.875, 1500.25] + [-1.0] * 18,
            [-1.0] * 20]
    return torch.tensor(rows, device="cuda")


def packed_fractional_case(head_dim, window, dtype=torch.float16):
    """packed_backward_case over PACKED_LENGTHS, 8 query heads to 2 kv heads, at
    Fibonacci positions 0.375 past their distances (the farthest several key
    tiles back)."""
    offsets = fibonacci_offsets(window, max(PACKED_LENGTHS), fractional=True)
    return packed_backward_case(PACKED_LENGTHS, 8, 2, head_dim, dtype, offsets, window)


def assert_gradients_bitwise(ours, theirs, reference):
    """A switch's two sides of one backward: dq, dk, dv and d offsets finite,
    bitwise equal, and within the contract of the float64 reference."""
    for name, a, b, ref in zip(["dq", "dk", "dv", "d offsets"], ours, theirs, reference):
        assert a.isfinite().all(), name
        assert torch.equal(a, b), name
        assert rel_err(a, ref) < 1e-2, name

def assert_rows_match(name, got, expected, tolerance=1e-2):
    """Every row (position, head) of `got` within `tolerance` of `expected`'s
    row norm, plus a thousandth of the median row norm (rows whose terms cancel)."""
    got, expected = got.double().flatten(0, -3), expected.double().flatten(0, -3)
    error, norm = (got - expected).norm(dim=-1), expected.norm(dim=-1)
    bad = (~(error <= tolerance * norm + 1e-3 * norm.median())).nonzero()
    assert bad.numel() == 0, (name, bad[:8].tolist(), (error / norm.clamp_min(1e-30)).max().item())


# How the CUDA runtime reports a kernel stopped by a device-side assert:
# usually "device-side assert triggered", but it has also reported "an illegal
# instruction was encountered" and "unspecified launch failure" (once each in
# some hundreds of such calls on an H200, driver 580.159.04). The check's own
# message in stderr is what names it.
DEVICE_ASSERT_ERRORS = ("device-side assert", "illegal instruction", "unspecified launch failure")


def refused_by_device_assert(stdout: str) -> bool:
    """Whether a checked subprocess printed REFUSED with a device-side assert's error."""
    return "REFUSED" in stdout and any(error in stdout for error in DEVICE_ASSERT_ERRORS)
