"""The performance sweep (the tables of docs/performance.md): fibsparse_attn
against FlashAttention (SDPA, dense causal), FlexAttention with the same sparse
mask, and the byte floor, over seqlen 1k..128k, head_dim 64/128, window
64/128/256, integer vs fractional offsets, with and without GQA.

Dense causal attention and a generic mask are weak baselines for a sparse
kernel. The fair peers are sliding-window kernels, which read a subset of our
keys (the band without the offsets): FlashAttention-4 (flash_attn.cute) and
torch's varlen_attn, both with window_size=(window - 1, 0), next to our own
window-only call (fib_window: fibsparse_attn with no offsets), the
like-for-like comparison. They run in the same run on the integer-offset
configurations, with their outputs and gradients checked against fib_window
and the ratios ours / peer. A peer that does not import, or whose torch has
no window, is left out and the header says why; one that fails on a
configuration is reported on its row and recorded as None.

One run prints everything, with ratios and peak extra memory, and writes CSV,
JSON and a PNG plot.

    python bench/bench_sweep.py --out bench/results/sweep_$(date +%F)
    python bench/bench_sweep.py --quick          # four configurations, one of them --fair's
    python bench/bench_sweep.py --fair           # the performance targets' configurations only
"""
from __future__ import annotations

import argparse
import csv
import importlib.metadata
import inspect
import json
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from bench_attention import copy_bandwidth, flex_attention, fwd_bwd, sparse_mask_mod
from fibsparse_ext import fibsparse_attn, make_schedule
from gpu_power import GpuSampler, gpu_state
from run_commit import measured_commit
from timing import graphed_ms, median_ms, peak_extra_mb

if flex_attention is not None:
    from torch.nn.attention.flex_attention import create_block_mask

FLEX_MAX_SEQLEN = 65536  # above this, building FlexAttention's block mask ran out of memory in the sweep
PEERS = ("fa4", "varlen")  # other libraries' kernels: one failing is reported, not fatal to the sweep
# bf16 keeps 8 bits of mantissa: two kernels summing in different orders differ by a few 2^-8 of the
# output's scale; a peer that attends to other keys differs by far more.
CHECK_TOLERANCE = 2e-2


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def find_fa4():
    """FlashAttention-4's flash_attn_func and its version, or None and why not."""
    try:
        from flash_attn.cute import flash_attn_func
    except Exception as error:  # not installed, or its CUDA/CuTe DSL setup failing at import
        return None, f"not measured ({type(error).__name__}: {first_line(error)})"
    try:
        version = importlib.metadata.version("flash-attn-4")
    except importlib.metadata.PackageNotFoundError:  # a source checkout on the path
        version = "unknown version"
    return flash_attn_func, f"flash-attn-4 {version}"


def find_varlen():
    """torch's varlen_attn and its parameters, or None and why not: its signature changed between
    releases (the first had is_causal and no window; enable_gqa came after window_size)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError as error:
        return None, {}, f"not measured (torch {torch.__version__}: {first_line(error)})"
    params = inspect.signature(varlen_attn).parameters
    if "window_size" not in params:
        return None, {}, f"not measured (varlen_attn of torch {torch.__version__} takes no window_size)"
    return varlen_attn, params, f"torch {torch.__version__}"


FA4, FA4_NOTE = find_fa4()
VARLEN, VARLEN_PARAMS, VARLEN_NOTE = find_varlen()


def varlen_kwargs(window: int, gqa: bool) -> dict:
    # A tuple: varlen_attn compares window_size with (-1, 0) to tell plain causal attention.
    kwargs = {"window_size": (window - 1, 0)}
    if "is_causal" in VARLEN_PARAMS:  # a release where causality is a flag of its own
        kwargs["is_causal"] = True
    if gqa and "enable_gqa" in VARLEN_PARAMS:  # without the flag, the FA2 kernel reads fewer kv heads as they are
        kwargs["enable_gqa"] = True
    return kwargs


def peer_calls() -> list[str]:
    """The exact calls timed against ours, for the header."""
    flags = ", is_causal=True" if "is_causal" in VARLEN_PARAMS else ""
    if "enable_gqa" in VARLEN_PARAMS:
        flags += ", enable_gqa=True (with GQA)"
    elif VARLEN is not None:
        flags += " (with GQA: k, v with their fewer heads, no enable_gqa in this torch)"
    return [
        "fib_window  fibsparse_attn(q, k, v, window, offsets=torch.empty(0, dtype=torch.int32, device='cuda'))",
        f"fa4         flash_attn.cute.flash_attn_func(q, k, v, causal=True, window_size=(window - 1, 0)), "
        f"out[0] if a tuple  [{FA4_NOTE}]",
        f"varlen      torch.nn.attention.varlen.varlen_attn(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), "
        f"cu_seqlens, cu_seqlens, seqlen, seqlen, window_size=(window - 1, 0){flags}), "
        f"cu_seqlens = [0, seqlen, .., batch * seqlen] int32  [{VARLEN_NOTE}]",
    ]


@dataclass
class Config:
    batch: int
    seqlen: int
    heads: int = 8
    heads_kv: int = 8
    head_dim: int = 64
    window: int = 128
    fractional: bool = False


# The configurations the performance targets name (bf16, window 128, Fibonacci offsets), in increasing
# time to measure (dense SDPA's dominates), so that a run cut short by the device's time limit has the first.
FAIR_CONFIGS = [Config(1, 16384, heads=32, heads_kv=8, head_dim=128), Config(1, 65536), Config(1, 131072),
                Config(1, 65536, heads=32, heads_kv=8, head_dim=128),
                Config(1, 131072, heads=32, heads_kv=8, head_dim=128)]


def sweep_configs(quick: bool = False, fair: bool = False) -> list[Config]:
    if fair:
        return list(FAIR_CONFIGS)
    lengths = [(16, 1024), (4, 4096), (1, 16384), (1, 65536), (1, 131072)]
    if quick:  # the last one, GQA with head_dim 128, gives the peers a fair configuration
        return [Config(16, 1024), Config(1, 16384), Config(1, 16384, fractional=True), FAIR_CONFIGS[0]]
    configs = [Config(b, n, fractional=f) for b, n in lengths for f in (False, True)]
    configs += [Config(b, n, head_dim=128) for b, n in lengths]
    configs += [Config(b, n, heads_kv=2) for b, n in lengths]  # GQA: 8 query heads, 2 kv heads
    configs += [Config(1, 16384, window=w) for w in (64, 256)]
    return configs + [c for c in FAIR_CONFIGS if c not in configs]


def window_peers(c: Config) -> dict:
    """The sliding-window kernels that import, each called on our (batch, seqlen, heads, head_dim) layout."""
    peers = {}
    if FA4 is not None:
        def fa4(q, k, v):
            out = FA4(q, k, v, causal=True, window_size=(c.window - 1, 0))
            return out[0] if isinstance(out, tuple) else out  # (out, lse) in the releases that return both
        peers["fa4"] = fa4
    if VARLEN is not None:
        kwargs = varlen_kwargs(c.window, c.heads != c.heads_kv)
        cu_seqlens = torch.arange(0, (c.batch + 1) * c.seqlen, c.seqlen, dtype=torch.int32, device="cuda")

        def varlen(q, k, v):
            packed = [t.flatten(0, 1) for t in (q, k, v)]  # (batch * seqlen, heads, head_dim), views
            out = VARLEN(*packed, cu_seqlens, cu_seqlens, c.seqlen, c.seqlen, **kwargs)
            return out.unflatten(0, (c.batch, c.seqlen))
        peers["varlen"] = varlen
    return peers


def outputs_and_grads(attend, q, k, v, grad) -> tuple:
    out = attend(q, k, v)
    return (out.detach(), *torch.autograd.grad(out, (q, k, v), grad))


def relative_diff(got, expected) -> float:
    """The largest |got - expected| over the largest |expected|, across the tensors."""
    return max(((a.float() - b.float()).abs().max() / b.float().abs().max()).item() for a, b in zip(got, expected))


def check_peers(window_only, peers: dict, q, k, v, grad) -> dict:
    """Each peer's output and gradients against ours with no offsets, the same sliding window: a peer
    computing another pattern (or, in an old release, a backward without the window) would make its
    ratios meaningless. Also the peers' first call: FA4 JIT-compiles its kernels here (seconds),
    untimed. A peer that fails here is not timed (its `_matches` is None)."""
    if not peers:
        return {}
    expected = outputs_and_grads(window_only, q, k, v, grad)
    row = {}
    for name, attend in peers.items():
        try:
            got = outputs_and_grads(attend, q, k, v, grad)
        except Exception as error:  # OutOfMemoryError included
            print(f"({name}: {first_line(error)}) ", end="")
            row[f"{name}_out_diff"] = row[f"{name}_grad_diff"] = row[f"{name}_matches"] = None
            continue
        row[f"{name}_out_diff"] = relative_diff(got[:1], expected[:1])
        row[f"{name}_grad_diff"] = relative_diff(got[1:], expected[1:])
        row[f"{name}_matches"] = max(row[f"{name}_out_diff"], row[f"{name}_grad_diff"]) <= CHECK_TOLERANCE
        del got
    del expected
    torch.cuda.empty_cache()
    return row


def method_columns(name: str) -> list[str]:
    return [f"{name}_fwd_ms", f"{name}_fwdbwd_ms", f"{name}_peak_mb", f"{name}_fwdbwd_graph_ms"]


def time_method(name: str, attend, q, k, v, grad, runs: int) -> dict:
    """Forward, forward+backward, peak extra memory and (but for flex) the step replayed from a CUDA
    graph, the GPU time without the host path. None where it ran out of memory, or where a peer failed."""
    row = dict.fromkeys(method_columns(name))
    step = fwd_bwd(attend, q, k, v, grad)
    try:
        step()  # untimed: a first call may compile (torch.compile for flex, the JIT for FA4)
        row[f"{name}_fwd_ms"] = median_ms(lambda: attend(q, k, v), runs=runs)
        row[f"{name}_fwdbwd_ms"] = median_ms(step, runs=runs)
        row[f"{name}_peak_mb"] = peak_extra_mb(step)
        if name != "flex":
            row[f"{name}_fwdbwd_graph_ms"] = graphed_or_none(name, step, runs)
    except torch.OutOfMemoryError:
        print(f"({name}: out of memory) ", end="")
    except Exception as error:
        if name not in PEERS:
            raise
        print(f"({name}: {first_line(error)}) ", end="")
    finally:  # the next method starts from what the inputs hold (at 128k, d128, 32 heads, every GB counts)
        del step
        torch.cuda.empty_cache()
    return row


def graphed_or_none(name: str, step, runs: int):
    try:
        return graphed_ms(step, runs=runs)
    except Exception as error:  # a capture failure is reported, not fatal to the sweep
        print(f"({name}: CUDA graph capture failed: {first_line(error)}) ", end="")
        return None


PHASES = ("fwd", "fwdbwd", "fwdbwd_graph")  # forward, forward+backward, and the latter replayed from a CUDA graph


def peer_ratios(row: dict) -> dict:
    """ours / peer (below 1: ours is faster), for our full pattern and our window alone against each
    sliding-window peer, in each phase."""
    ratios = {}
    for ours in ("fibsparse", "fib_window"):
        for peer in PEERS:
            for phase in PHASES:
                mine, theirs = row.get(f"{ours}_{phase}_ms"), row.get(f"{peer}_{phase}_ms")
                if mine and theirs:
                    ratios[f"{ours}_over_{peer}_{phase}"] = mine / theirs
    return ratios


def time_in_rounds(methods: dict, q, k, v, grad, runs: int, rounds: int, sampler: GpuSampler | None = None) -> dict:
    """time_method for each method in `rounds` rounds, the order reversed every other round, keeping
    each column's fastest round (as bench_hopper_forward.py does) and every round's value in
    `<column>_rounds`: a method timed once, always after the same neighbour, carries whatever that
    neighbour left behind (clocks, L2 contents), and one round's value may be an outlier. With a
    sampler (gpu_power.py), `<method>_gpu_rounds` holds the GPU's clock and power while each round
    of it ran (None where no sample fell in it): a method that draws the card's power limit is
    clocked down, and its time with it."""
    per_round = {name: [] for name in methods}
    gpu_rounds = {name: [] for name in methods}
    for r in range(rounds):
        names = list(methods) if r % 2 == 0 else list(reversed(methods))
        for name in names:
            start = time.monotonic()
            per_round[name].append(time_method(name, methods[name], q, k, v, grad, runs))
            if sampler is not None:
                gpu_rounds[name].append(sampler.summary(start, time.monotonic()))
    row = {f"{name}_gpu_rounds": states for name, states in gpu_rounds.items() if sampler is not None}
    for name, results in per_round.items():
        for column in method_columns(name):
            values = [result[column] for result in results if result[column] is not None]
            peak = column == f"{name}_peak_mb"  # memory: the most any round took
            row[column] = (max(values) if peak else min(values)) if values else None
            if rounds > 1 and not peak:
                row[f"{column}_rounds"] = [result[column] for result in results]
    return row


def measure(config: Config, bandwidth: float, with_peers: bool = True, rounds: int = 1,
            sampler: GpuSampler | None = None) -> dict:
    torch.manual_seed(0)
    c = config
    q = torch.randn(c.batch, c.seqlen, c.heads, c.head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(c.batch, c.seqlen, c.heads_kv, c.head_dim, device="cuda", dtype=torch.bfloat16,
                    requires_grad=True)
    v = torch.randn_like(k, requires_grad=True)
    grad = torch.randn_like(q)
    offsets = torch.tensor(make_schedule("fixed", num_layers=1, window=c.window, max_distance=c.seqlen).offsets(0),
                           dtype=torch.int32, device="cuda")
    positions = offsets.float() * 0.97 if c.fractional else offsets
    gqa = c.heads != c.heads_kv
    methods = {
        "fibsparse": lambda q, k, v: fibsparse_attn(q, k, v, c.window, positions),
        "sdpa": lambda q, k, v: F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=gqa).transpose(1, 2),
    }
    if flex_attention is not None and not c.fractional and c.seqlen <= FLEX_MAX_SEQLEN:
        block_mask = create_block_mask(sparse_mask_mod(c.window, offsets, c.seqlen), None, None, c.seqlen, c.seqlen)
        flex = torch.compile(flex_attention)
        methods["flex"] = lambda q, k, v: flex(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               block_mask=block_mask, enable_gqa=gqa).transpose(1, 2)
    row = {**asdict(c), "num_offsets": len(offsets)}
    if not c.fractional:  # the window alone is the same with fractional offsets: the integer row has it
        # An empty device tensor, as the full pattern passes its offsets: the same host path.
        no_offsets = torch.empty(0, dtype=torch.int32, device="cuda")
        methods["fib_window"] = lambda q, k, v: fibsparse_attn(q, k, v, c.window, no_offsets)
        peers = window_peers(c) if with_peers else {}
        row.update(check_peers(methods["fib_window"], peers, q, k, v, grad))
        for name, attend in peers.items():
            if row[f"{name}_matches"] is not None:  # it ran: timed even if it mismatched, and flagged
                methods[name] = attend
            else:
                row.update(dict.fromkeys(method_columns(name)))
    runs = 10 if c.seqlen >= 65536 else 20
    sliding = {name: attend for name, attend in methods.items() if name in ("fibsparse", "fib_window", *PEERS)}
    row["gpu_before"] = gpu_state()
    with sampler or nullcontext():
        row.update(time_in_rounds(sliding, q, k, v, grad, runs, rounds, sampler))
    row["gpu_after"] = gpu_state()
    for name, attend in methods.items():  # the dense baselines last: a second of full power a call at 128k
        if name not in sliding:
            row.update(time_method(name, attend, q, k, v, grad, runs))
    io_bytes = q.element_size() * (2 * q.numel() + 2 * k.numel())
    row["floor_fwd_ms"] = io_bytes / bandwidth * 1e3
    fib_fwd, fib_all = row["fibsparse_fwd_ms"], row["fibsparse_fwdbwd_ms"]
    row["fwd_vs_floor"] = fib_fwd / row["floor_fwd_ms"]
    row["fwdbwd_vs_floor"] = fib_all / row["floor_fwd_ms"]
    for other in ("sdpa", "flex"):
        if row.get(f"{other}_fwdbwd_ms"):
            row[f"speedup_vs_{other}_fwd"] = row[f"{other}_fwd_ms"] / fib_fwd
            row[f"speedup_vs_{other}_fwdbwd"] = row[f"{other}_fwdbwd_ms"] / fib_all
    if row.get("fibsparse_fwdbwd_graph_ms") and row.get("sdpa_fwdbwd_graph_ms"):
        row["speedup_vs_sdpa_fwdbwd_graph"] = row["sdpa_fwdbwd_graph_ms"] / row["fibsparse_fwdbwd_graph_ms"]
    row.update(peer_ratios(row))
    return row


def print_row(row: dict) -> None:
    name = (f"B={row['batch']:<2d} L={row['seqlen']:<6d} H={row['heads']}/{row['heads_kv']} d={row['head_dim']} "
            f"w={row['window']} K={row['num_offsets']} {'frac' if row['fractional'] else 'int '}")
    fmt = lambda x: "   -   " if x is None else f"{x:7.3f}"  # noqa: E731
    print(f"{name:44s} fib {fmt(row['fibsparse_fwd_ms'])}/{fmt(row['fibsparse_fwdbwd_ms'])}  "
          f"sdpa {fmt(row.get('sdpa_fwd_ms'))}/{fmt(row.get('sdpa_fwdbwd_ms'))}  "
          f"flex {fmt(row.get('flex_fwd_ms'))}/{fmt(row.get('flex_fwdbwd_ms'))}  floor {row['floor_fwd_ms']:.3f}  "
          f"x floor {row['fwd_vs_floor']:5.1f}/{row['fwdbwd_vs_floor']:5.1f}  "
          f"vs sdpa {row.get('speedup_vs_sdpa_fwdbwd', 0):6.2f}x  vs flex {row.get('speedup_vs_flex_fwdbwd', 0):5.2f}x  "
          f"peak MB fib {fmt(row.get('fibsparse_peak_mb'))} sdpa {fmt(row.get('sdpa_peak_mb'))}  "
          f"graphed fwd+bwd fib {fmt(row.get('fibsparse_fwdbwd_graph_ms'))} sdpa {fmt(row.get('sdpa_fwdbwd_graph_ms'))} "
          f"({row.get('speedup_vs_sdpa_fwdbwd_graph', 0):.2f}x)", flush=True)
    if "fib_window_fwd_ms" in row:
        print(f"{'':8s}{peers_line(row)}", flush=True)
    if "fibsparse_fwd_ms_rounds" in row:
        print(f"{'':8s}{rounds_line(row)}", flush=True)


def rounds_line(row: dict) -> str:
    """Each round's forward and forward+backward of the methods timed in rounds (the row keeps the
    fastest), the GPU's clock, temperature and power before and after them, and where it was
    sampled, its clock and power while each round of each method ran (a second line)."""
    fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    names = [key[: -len("_fwd_ms_rounds")] for key in row if key.endswith("_fwd_ms_rounds")]
    times = "  ".join(f"{name} {' '.join(map(fmt, row[f'{name}_fwd_ms_rounds']))} / "
                      f"{' '.join(map(fmt, row[f'{name}_fwdbwd_ms_rounds']))}" for name in names)
    line = f"rounds, fwd / fwd+bwd ms: {times}  | GPU (MHz, C, W) before {row['gpu_before']}, after {row['gpu_after']}"
    states = "; ".join(f"{name} {' | '.join(state or '-' for state in row[f'{name}_gpu_rounds'])}"
                       for name in names if row.get(f"{name}_gpu_rounds"))
    if not states:
        return line
    return f"{line}\n{'':8s}GPU while each round ran, SM clock median (range), power median: {states}"


def peers_line(row: dict) -> str:
    """The sliding-window comparison of one configuration: times, ours / peer, and the check."""
    fmt = lambda x: "  -  " if x is None else f"{x:.3f}"  # noqa: E731
    present = [peer for peer in PEERS if f"{peer}_matches" in row]  # the header says why one is absent
    times = "  ".join(f"{name} {fmt(row.get(f'{name}_fwd_ms'))}/{fmt(row.get(f'{name}_fwdbwd_ms'))}"
                      for name in ["fib_window", *present])
    parts = [f"window only, fwd/fwd+bwd ms: {times}"]
    for peer in present:
        ratios = {ours: " ".join(fmt(row.get(f"{ours}_over_{peer}_{phase}")) for phase in PHASES)
                  for ours in ("fibsparse", "fib_window")}
        matches = row[f"{peer}_matches"]
        check = {None: "failed, not timed", True: "ok", False: "MISMATCH, ratios meaningless"}[matches]
        if matches is not None:
            check += f" (out {row[f'{peer}_out_diff']:.1e}, grad {row[f'{peer}_grad_diff']:.1e})"
        parts.append(f"| ours/{peer} fwd f+b graphed-f+b: full {ratios['fibsparse']}, "
                     f"window {ratios['fib_window']}; check {check}")
    return "  ".join(parts)


def plot(rows: list, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:  # the tables above are the results; the PNG is for docs/performance.md
        print(f"matplotlib is not installed: no {path.name} (pip install matplotlib)")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    base = [r for r in rows if r["heads"] == 8 and r["head_dim"] == 64 and r["heads_kv"] == 8 and r["window"] == 128]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    curves = [("fibsparse_fwdbwd_ms", "fibsparse (int)", "-"), ("sdpa_fwdbwd_ms", "SDPA causal", "--"),
              ("flex_fwdbwd_ms", "Flex, same mask", ":"), ("fib_window_fwdbwd_ms", "fibsparse, window only", "-."),
              ("fa4_fwdbwd_ms", "FA4, sliding window", (0, (5, 2, 1, 2, 1, 2)))]
    for key, label, style in curves:
        points = sorted((r["seqlen"] * r["batch"], r[key]) for r in base if not r["fractional"] and r.get(key))
        if points:  # a peer that is not installed has no curve
            axes.plot(*zip(*points), marker="o", linestyle=style, label=label)
    frac = sorted((r["seqlen"] * r["batch"], r["fibsparse_fwdbwd_ms"]) for r in base if r["fractional"])
    if frac:
        axes.plot(*zip(*frac), marker="s", label="fibsparse (fractional)")
    axes.set(xscale="log", yscale="log", xlabel="tokens per batch", ylabel="forward+backward ms (bf16)",
             title="8 heads, head_dim 64, window 128")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def write_results(out: Path, meta: dict, rows: list) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    with open(out / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sorted({key for row in rows for key in row}))
        writer.writeheader()
        writer.writerows(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--quick", action="store_true", help="four configurations, one of them --fair's")
    modes.add_argument("--fair", action="store_true",
                       help="only the performance targets' configurations, against the sliding-window peers")
    parser.add_argument("--no-peers", action="store_true",
                        help="leave FA4 and varlen_attn out (before/after comparisons of our own kernels)")
    parser.add_argument("--out", type=Path, default=None, help="folder for sweep.csv, sweep.json, sweep.png")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of our kernels and the sliding-window peers per configuration, alternating "
                             "their order, the fastest kept (default: 3 with --fair, else 1)")
    parser.add_argument("--no-gpu-sampling", action="store_true",
                        help="do not sample the GPU's clock and power with nvidia-smi while the rounds run")
    args = parser.parse_args()
    rounds = args.rounds if args.rounds is not None else (3 if args.fair else 1)
    if rounds < 1:
        parser.error(f"--rounds must be at least 1, got {rounds}")
    if not torch.cuda.is_available():
        raise SystemExit("the sweep needs a CUDA GPU")
    bandwidth = copy_bandwidth()
    sampler, sampling = (None, "off (--no-gpu-sampling)") if args.no_gpu_sampling else GpuSampler.for_current_device()
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "commit": measured_commit(),
            "copy_bandwidth_tb_s": bandwidth / 1e12, "peer_calls": peer_calls(), "check_tolerance": CHECK_TOLERANCE,
            "rounds": rounds, "gpu_sampling": sampling}
    print({key: value for key, value in meta.items() if key != "peer_calls"})
    print("sliding-window peers (the band of our pattern, without the offsets), on the integer-offset configurations;"
          f" outputs and gradients checked against fib_window, max |diff| / max |fib_window| <= {CHECK_TOLERANCE}:")
    for call in meta["peer_calls"][:1] if args.no_peers else meta["peer_calls"]:
        print(f"  {call}")
    if args.no_peers:
        print("  fa4, varlen: left out (--no-peers)")
    rows = []
    configs = sweep_configs(args.quick, args.fair)
    for n, config in enumerate(configs):
        print(f"[{n + 1}/{len(configs)}] ", end="", flush=True)
        rows.append(measure(config, bandwidth, with_peers=not args.no_peers, rounds=rounds, sampler=sampler))
        print_row(rows[-1])
        if args.out:  # after every row: a run stopped by the device's time limit keeps what it measured
            write_results(args.out, meta, rows)
    if args.out:
        plot(rows, args.out / "sweep.png")
        print(f"wrote {args.out}/sweep.{{json,csv,png}}")


if __name__ == "__main__":
    main()
